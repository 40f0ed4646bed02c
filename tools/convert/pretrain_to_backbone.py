"""Extract the teacher (or student) backbone of a pretraining checkpoint as an official file.

Examples::

    python tools/convert/pretrain_to_backbone.py work_dirs/dinov2_vitl16/iter_12500.pth \\
        vitl16_teacher.pth                      # teacher, official layout
    python tools/convert/pretrain_to_backbone.py ckpt.pth student.safetensors --model student

Accepted inputs (the first that matches wins):

* dino_mm / MMEngine checkpoints: ``{'state_dict': {'teacher.backbone.*', 'student.*', ...},
  'meta': ..., 'optimizer': ...}`` (the pretraining model keeps ``student`` and ``teacher``
  ``ModuleDict``s with ``backbone``, ``dino_head`` and optionally ``ibot_head``);
* the same keys without the ``state_dict`` wrapper, or under ``model`` (official
  ``model_final.pth``), with or without a DDP ``module.`` prefix;
* official teacher checkpoints: ``{'teacher': {'backbone.*', 'dino_head.*', ...}}``.

FSDP-chunked ``blocks.{c}.{i}`` keys are flattened. The result must look like an official
ViT / ConvNeXt backbone; ``--arch`` additionally loads it strictly into that dino_mm model.
Checkpoints are read with the safe loader; pass ``--unsafe-load`` for a trusted file that
holds arbitrary Python objects.
"""
import argparse
import os.path as osp
import sys
from typing import Dict, Mapping

import torch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='pretraining checkpoint (.pth)')
    parser.add_argument('dst', help='output backbone file (.pth or .safetensors)')
    parser.add_argument('--model', default='teacher', choices=['teacher', 'student'],
                        help='which network to extract (default: teacher)')
    parser.add_argument('--to', dest='dst_layout', default='official',
                        choices=['official', 'hf', 'timm'], help='output layout')
    parser.add_argument('--arch', default=None,
                        help="check: strict-load into DinoVisionTransformer(arch=...) or "
                        "DinoConvNeXt (arch 'dinov3_convnext_*'); the checkpoint's shapes "
                        'must match the arch')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='torch.load(weights_only=False); only for trusted files')
    return parser.parse_args(argv)


def _load(path: str, unsafe: bool):
    if unsafe:
        return torch.load(path, map_location='cpu', weights_only=False)
    try:
        from dino_mm.engine.checkpoint import safe_torch_load
    except ImportError:  # engine not available: plain safe loading
        return torch.load(path, map_location='cpu', weights_only=True)
    return safe_torch_load(path)


def extract_backbone(ckpt: Mapping, which: str = 'teacher') -> Dict[str, torch.Tensor]:
    """Return the ``which`` backbone tensors of a pretraining checkpoint (see module doc)."""
    if not isinstance(ckpt, Mapping):
        raise KeyError(f'expected a dict checkpoint, got {type(ckpt).__name__}.')
    if isinstance(ckpt.get(which), Mapping):  # official {'teacher': {'backbone.*': ...}}
        sd, prefixes = ckpt[which], ('backbone.', 'module.backbone.')
    else:
        sd = next((ckpt[k] for k in ('state_dict', 'model') if isinstance(ckpt.get(k), Mapping)),
                  ckpt)
        prefixes = (f'{which}.backbone.', f'module.{which}.backbone.')
    for prefix in prefixes:
        out = {k[len(prefix):]: v for k, v in sd.items()
               if k.startswith(prefix) and isinstance(v, torch.Tensor)}
        if out:
            return out
    sample = sorted(k for k in sd if isinstance(k, str))[:8]
    raise KeyError(f'no {which} backbone found: expected keys starting with '
                   f'{" or ".join(prefixes)} (first keys: {sample}). Is this a pretraining '
                   f'checkpoint? Plain backbone files need tools/convert/convert_checkpoint.py.')


def _check_arch(official: Dict[str, torch.Tensor], arch: str) -> None:
    """Strict-load ``official`` into the dino_mm model ``arch`` (on the meta device)."""
    from dino_mm.models.backbones.convnext import DinoConvNeXt
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    if 'convnext' in arch:
        cls, kwargs = DinoConvNeXt, {}
    else:
        cls, kwargs = DinoVisionTransformer, {}
        if 'pos_embed' in official:
            # Pretraining crops (e.g. 224) size the learned position grid, not the hub 518.
            patch = official['patch_embed.proj.weight'].shape[-1]
            grid = int(round((official['pos_embed'].shape[1] - 1) ** 0.5))
            kwargs['img_size'] = grid * patch
    with torch.device('meta'):
        model = cls(arch=arch, **kwargs)
    model.load_state_dict(official, strict=True, assign=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from dino_mm.models.converters import (LayoutError, convert_state_dict, detect_layout,
                                           save_state_dict_file)
    try:
        sd = extract_backbone(_load(args.src, args.unsafe_load), args.model)
        official = convert_state_dict(sd, to='official', src='official')
        family, _ = detect_layout(official)
        if args.arch:
            _check_arch(official, args.arch)
        out = (official if args.dst_layout == 'official'
               else convert_state_dict(official, to=args.dst_layout))
        written = save_state_dict_file(out, args.dst)
    except (KeyError, LayoutError, FileNotFoundError, RuntimeError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 2
    print(f'{args.src}: {args.model} backbone ({family}, {len(official)} tensors) -> '
          f'{args.dst_layout} written to {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
