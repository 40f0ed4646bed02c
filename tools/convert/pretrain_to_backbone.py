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

FSDP-chunked ``blocks.{c}.{i}`` keys are flattened.

The output records the ViT's architecture -- the ``DinoVisionTransformer`` arguments of the
training config (``meta['cfg']`` of the checkpoint, or ``--config``), e.g.
``{'arch': 'dinov2_vits14', 'embed_dim': 96, 'depth': 4, 'img_size': 224, ...}`` -- under
the top-level key ``'dino_mm_arch'`` next to ``'state_dict'`` (``.pth``; plain values that
``torch.load(weights_only=True)`` reads) or as JSON metadata (``.safetensors``). dino_mm's
loaders (hub ``weights=``, ``backbone_checkpoint``, the feature tools' ``--weights``) build
that architecture, so no ``--arch`` / ``--override`` is needed. ``--no-arch-record``
writes the bare official state dict (for the official repositories' loaders). The result must look like an official
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
    parser.add_argument('--config', default=None,
                        help="training config whose model's backbone is recorded (default: "
                        "the config saved in the checkpoint's meta)")
    parser.add_argument('--no-arch-record', action='store_true',
                        help='write the bare state dict, without the architecture record')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='torch.load(weights_only=False); only for trusted files')
    return parser.parse_args(argv)


def _load(path: str, unsafe: bool):
    from dino_mm.engine.checkpoint import safe_torch_load
    return safe_torch_load(path, trusted=True if unsafe else None)


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


def _backbone_cfg(cfg: Mapping, which: str):
    model = cfg.get('model') or {}
    teacher = model.get('teacher')
    if which == 'teacher' and isinstance(teacher, Mapping) and teacher.get('backbone'):
        return teacher['backbone']  # distillation: a separate (frozen) teacher
    return model.get('backbone')  # DINOv2 / DINOv3: the teacher is a copy of the student


def arch_record(ckpt: Mapping, which: str = 'teacher', config: str = None) -> dict:
    """The ``dino_mm_arch`` record of the ``which`` ViT: its constructor arguments in the
    training config (``config`` path, else the checkpoint's ``meta['cfg']``)."""
    from mmengine.config import Config

    from dino_mm.models.converters import ARCH_ARGS
    if config is not None:
        cfg, where = Config.fromfile(config), config
    else:
        text = (ckpt.get('meta') or {}).get('cfg') if isinstance(ckpt, Mapping) else None
        if not isinstance(text, str):
            raise KeyError("the checkpoint has no meta['cfg'] (the training config) to read "
                           'the architecture from; pass --config CONFIG (the training '
                           'config) or --no-arch-record.')
        cfg, where = Config.fromstring(text, '.py'), "the checkpoint's meta['cfg']"
    bb = _backbone_cfg(cfg, which)
    if not isinstance(bb, Mapping) or 'VisionTransformer' not in str(bb.get('type', '')):
        raise KeyError(f'{where}: model.backbone is not a dino_mm.DinoVisionTransformer '
                       f'({None if bb is None else bb.get("type")}); pass --no-arch-record.')
    if not isinstance(bb.get('arch'), str):
        raise KeyError(f'{where}: model.backbone.arch must be an arch name to be recorded, '
                       f'got {bb.get("arch")!r}; pass --no-arch-record.')
    record = {'arch': bb['arch']}
    for k in ARCH_ARGS:
        if k in bb:
            v = bb[k]
            record[k] = list(v) if isinstance(v, tuple) else v
    return record


def _check_record(official: Dict[str, torch.Tensor], record: dict) -> None:
    """Strict-load ``official`` into the recorded architecture (on the meta device)."""
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    kwargs = dict(record)
    with torch.device('meta'):
        model = DinoVisionTransformer(kwargs.pop('arch'), **kwargs)
    try:
        model.load_state_dict(official, strict=True, assign=True)
    except RuntimeError as err:
        raise RuntimeError(f'the recorded architecture {record} does not fit the weights '
                           f'(pass --config with the training config, or --no-arch-record):'
                           f' {str(err)[:2000]}') from err


def _has_cfg(ckpt) -> bool:
    return isinstance(ckpt, Mapping) and isinstance((ckpt.get('meta') or {}).get('cfg'), str)


def _arch_kwargs(official: Dict[str, torch.Tensor]) -> dict:
    """Constructor arguments implied by the file for a ViT arch name (the position grid)."""
    if 'pos_embed' not in official:
        return {}
    # Pretraining crops (e.g. 224) size the learned position grid, not the hub 518.
    patch = official['patch_embed.proj.weight'].shape[-1]
    grid = int(round((official['pos_embed'].shape[1] - 1) ** 0.5))
    return {'img_size': grid * patch}


def _check_arch(official: Dict[str, torch.Tensor], arch: str) -> None:
    """Strict-load ``official`` into the dino_mm model ``arch`` (on the meta device)."""
    from dino_mm.models.backbones.convnext import DinoConvNeXt
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    if 'convnext' in arch:
        cls, kwargs = DinoConvNeXt, {}
    else:
        cls, kwargs = DinoVisionTransformer, _arch_kwargs(official)
    with torch.device('meta'):
        model = cls(arch=arch, **kwargs)
    model.load_state_dict(official, strict=True, assign=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from dino_mm.models.converters import (LayoutError, convert_state_dict, detect_layout,
                                           save_state_dict_file)
    try:
        ckpt = _load(args.src, args.unsafe_load)
        sd = extract_backbone(ckpt, args.model)
        official = convert_state_dict(sd, to='official', src='official')
        family, _ = detect_layout(official)
        if args.arch:
            _check_arch(official, args.arch)
        record = None
        if not args.no_arch_record and family != 'dinov3_convnext':
            if args.config is None and not _has_cfg(ckpt) and args.arch:
                record = {'arch': args.arch, **_arch_kwargs(official)}  # what --arch checked
            elif args.config is None and not _has_cfg(ckpt):
                print(f"warning: {args.src} has no meta['cfg'] (not written by "
                      'tools/train.py): the architecture is not recorded, so loaders need '
                      '--arch / overrides; pass --config CONFIG (the training config) or '
                      '--arch to record it.', file=sys.stderr)
            else:
                record = arch_record(ckpt, args.model, args.config)
            if record is not None:
                _check_record(official, record)
        out = (official if args.dst_layout == 'official'
               else convert_state_dict(official, to=args.dst_layout))
        written = save_state_dict_file(out, args.dst, arch=record)
    except (KeyError, LayoutError, FileNotFoundError, RuntimeError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 2
    print(f'{args.src}: {args.model} backbone ({family}, {len(official)} tensors) -> '
          f'{args.dst_layout} written to {written}'
          + (f' (architecture recorded: {record})' if record else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
