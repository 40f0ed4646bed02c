"""Command-line arguments shared by the feature tools (``tools/analysis/*.py``,
``tools/extract_features.py``, ``tools/export.py``)."""
import argparse
import ast
from typing import Any, Dict, List, Optional

from .extractors import (BackboneFeatures, PatchFeatureExtractor, PixelPatchFeatures,
                         build_backbone)


def parse_overrides(items: Optional[List[str]]) -> Dict[str, Any]:
    """``['depth=2', 'embed_dim=64']`` -> ``{'depth': 2, 'embed_dim': 64}``.

    Values are read as Python literals when possible (numbers, booleans, tuples),
    otherwise kept as strings.
    """
    out: Dict[str, Any] = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'Model override {item!r} must look like KEY=VALUE '
                             f'(e.g. depth=2).')
        key, value = item.split('=', 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def add_model_args(parser: argparse.ArgumentParser, default_size: Optional[int] = 448
                   ) -> argparse.ArgumentParser:
    """Add ``--arch --weights --size --layer --device --precision --override
    --pixel-features``."""
    group = parser.add_argument_group('model')
    group.add_argument('--arch', default=None,
                       help='official backbone name, e.g. dinov2_vits14 or dinov3_vitb16 '
                       '(default: the architecture recorded in --weights, as written by '
                       'tools/convert/pretrain_to_backbone.py, else dinov2_vits14)')
    group.add_argument('--weights', default=None,
                       help='local checkpoint (official, HF or timm layout, or a file '
                       'exported by tools/convert/pretrain_to_backbone.py, whose recorded '
                       'architecture is used); without it the backbone is randomly '
                       'initialised (a warning is printed)')
    group.add_argument('--size', type=int, default=default_size,
                       help='shorter image side in pixels before rounding to whole '
                       'patches (default: %(default)s)')
    group.add_argument('--layer', type=int, default=None,
                       help='read patch tokens of this 0-based block (final norm applied) '
                       'instead of the last block')
    group.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    group.add_argument('--precision', choices=['auto', 'fp32', 'bf16', 'fp16'],
                       default='auto',
                       help="backbone precision: 'auto' = bf16 on a CPU with native bf16 "
                       '(avx512_bf16 / amx_bf16) and on CUDA, else fp32; fp16 is CUDA only. '
                       'Features are written / used as fp32 either way (default: auto)')
    group.add_argument('--override', nargs='*', default=None, metavar='KEY=VALUE',
                       help='backbone constructor overrides, e.g. depth=2 embed_dim=64')
    group.add_argument('--pixel-features', action='store_true',
                       help='use raw pixels of each patch as features (no network); '
                       'useful to check the tool or without weights')
    group.add_argument('--patch-size', type=int, default=14,
                       help='patch size of --pixel-features (default: %(default)s)')
    return parser


def build_extractor(args: argparse.Namespace) -> PatchFeatureExtractor:
    """The extractor selected by :func:`add_model_args` arguments."""
    if args.pixel_features:
        return PixelPatchFeatures(args.patch_size)
    model = build_backbone(args.arch, args.weights, device=args.device,
                           **parse_overrides(args.override))
    return BackboneFeatures(model, layer=args.layer, precision=args.precision)
