"""Consolidate a sharded (DCP) pretraining checkpoint into one official-layout backbone file.

``dino_mm.DINOFSDPStrategy`` saves every checkpoint as a folder (``iter_N.pth/``) holding each
rank's shards, the DCP ``.metadata`` and ``meta.pth``. This tool runs in a single process
without a process group or GPU, reads the full tensors of ``teacher.backbone`` (or
``student.backbone``), flattens the FSDP block chunks (``blocks.{c}.{i}`` -> ``blocks.{i}``)
and writes an official backbone file (``.pth`` loadable with ``weights_only=True``, or
``.safetensors``)::

    python tools/convert/consolidate_sharded.py work_dirs/dinov2_vitl14/iter_12500.pth \\
        vitl14_teacher.pth [--model student] [--arch dinov2_vitl14] [--full out_full.pth]

``--full`` additionally writes the whole model state dict (student, teacher, heads, loss
centers) as one plain ``.pth`` that ``tools/convert/pretrain_to_backbone.py`` and
``load_from`` accept.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='sharded checkpoint folder (contains .metadata)')
    parser.add_argument('dst', help='output backbone file (.pth or .safetensors)')
    parser.add_argument('--model', default='teacher', choices=['teacher', 'student'],
                        help='which backbone to extract (default: teacher)')
    parser.add_argument('--arch', default=None,
                        help='also strict-load the result into DinoVisionTransformer(arch)')
    parser.add_argument('--full', default=None,
                        help='also write the complete model state dict to this .pth')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dino_mm.engine.checkpoint import CheckpointError, atomic_torch_save
    from dino_mm.engine.fsdp import is_sharded_checkpoint, read_sharded_state_dict
    from dino_mm.models.converters import LayoutError, save_state_dict_file, unchunk_blocks
    if not is_sharded_checkpoint(args.src):
        hint = (' It is a plain file: use tools/convert/pretrain_to_backbone.py.'
                if osp.isfile(args.src) else '')
        print(f'error: {args.src}: not a sharded checkpoint folder with a .metadata file.'
              f'{hint}', file=sys.stderr)
        return 2
    try:
        full = read_sharded_state_dict(args.src)
        prefix = f'{args.model}.backbone.'
        backbone = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        if not backbone:
            raise KeyError(f'no {prefix}* tensors (first keys: {sorted(full)[:6]}).')
        official = unchunk_blocks(backbone)
        if args.arch:
            sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
            from pretrain_to_backbone import _check_arch
            _check_arch(official, args.arch)
        written = save_state_dict_file(official, args.dst)
        if args.full:
            atomic_torch_save({'state_dict': full}, args.full)
    except (KeyError, LayoutError, CheckpointError, RuntimeError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 2
    print(f'{args.src}: {args.model} backbone ({len(official)} tensors) written to {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
