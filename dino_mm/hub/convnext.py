"""Hub constructors for the DINOv3 ConvNeXts, named like the official hub entries.

No weights can be downloaded here: ``weights`` is a local file (or a directory holding the
official file), and ``pretrained=True`` without one raises an error naming the file to get.
"""
import os
from typing import Any, Optional

import torch

from dino_mm.models.backbones.convnext import DinoConvNeXt

__all__ = [
    'dinov3_convnext_tiny', 'dinov3_convnext_small', 'dinov3_convnext_base',
    'dinov3_convnext_large'
]

# 8-hex-digit suffixes of the released LVD-1689M files (SPEC §3.5).
CONVNEXT_WEIGHT_HASHES = {
    'tiny': '21b726bb',
    'small': '296db49d',
    'base': '801f2ba9',
    'large': '61fa432d',
}


def official_convnext_filename(size: str) -> str:
    """Official file name of the DINOv3 ConvNeXt ``size`` LVD-1689M backbone weights."""
    return (f'dinov3_convnext_{size}_pretrain_lvd1689m-'
            f'{CONVNEXT_WEIGHT_HASHES[size]}.pth')


def _resolve_weights(size: str, weights: Optional[str]) -> str:
    expected = official_convnext_filename(size)
    if weights is None or str(weights).upper() == 'LVD1689M':
        hub_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
        candidate = os.path.join(hub_dir, expected)
        if os.path.isfile(candidate):
            return candidate
        raise FileNotFoundError(
            f'dinov3_convnext_{size}(pretrained=True) needs the official weights file '
            f"'{expected}', which cannot be downloaded here. Get it from Meta (the DINOv3 "
            f'weights are gated) and pass weights=<path>, or put it at {candidate}.')
    path = os.path.expanduser(str(weights))
    if path.startswith(('http://', 'https://')):
        raise ValueError(f"weights={weights!r}: URLs cannot be fetched offline; download "
                         f"'{expected}' and pass its local path.")
    if os.path.isdir(path):
        path = os.path.join(path, expected)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights={weights!r}: no such file (expected the official "
                                f"'{expected}' or a converted copy of it).")
    return path


def _make_convnext(size: str, pretrained: bool, weights: Optional[str],
                   **kwargs: Any) -> DinoConvNeXt:
    if not pretrained and weights is None:
        return DinoConvNeXt(arch=size, **kwargs)
    # Resolve the file before building, so a missing file fails fast.
    path = _resolve_weights(size, weights)
    model = DinoConvNeXt(arch=size, **kwargs)
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
    from dino_mm.models.converters import convert_state_dict
    state_dict = convert_state_dict(state_dict, to='official', family='dinov3_convnext')
    model.load_state_dict(state_dict, strict=True)
    return model


def dinov3_convnext_tiny(pretrained: bool = False, weights: Optional[str] = None,
                         **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Tiny (29M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('tiny', pretrained, weights, **kwargs)


def dinov3_convnext_small(pretrained: bool = False, weights: Optional[str] = None,
                          **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Small (50M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('small', pretrained, weights, **kwargs)


def dinov3_convnext_base(pretrained: bool = False, weights: Optional[str] = None,
                         **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Base (89M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('base', pretrained, weights, **kwargs)


def dinov3_convnext_large(pretrained: bool = False, weights: Optional[str] = None,
                          **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Large (198M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('large', pretrained, weights, **kwargs)
