"""Hub constructors for the DINOv3 ConvNeXts, named like the official hub entries.

As in the official hub, the default loads the official weights; no weights can be
downloaded here: ``weights`` is a local file (official, HF transformers or timm layout), a
HF model folder or a directory holding the official file. With the default
``pretrained=None`` and no file, the random init is returned after a loud warning naming
the file; ``pretrained=True`` without it raises an error naming the file to get;
``pretrained=False`` gives the random init.
"""
import os
from typing import Any, Optional

import torch

from dino_mm.models.backbones.convnext import DinoConvNeXt
from dino_mm.models.backbones.utils import load_checkpoint_strict
from .utils import find_weights, warn_random_init, weights_dirs

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
        # The one lookup of every hub entry (dino_mm.hub.utils): $DINO_MM_WEIGHTS,
        # ~/.cache/dino_mm/weights, torch.hub's checkpoints folder.
        found = find_weights(expected)
        if found is not None:
            return found
        raise FileNotFoundError(
            f'dinov3_convnext_{size}(pretrained=True) needs the official weights file '
            f"'{expected}', which cannot be downloaded here. Get it from Meta (the DINOv3 "
            f'weights are gated) and pass weights=<path>, or put it in one of '
            f'{weights_dirs()}.')
    path = os.path.expanduser(str(weights))
    if path.startswith(('http://', 'https://')):
        raise ValueError(f"weights={weights!r}: URLs cannot be fetched offline; download "
                         f"'{expected}' and pass its local path.")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, 'config.json')):
        path = os.path.join(path, expected)  # a folder holding the official file
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights={weights!r}: no such file (expected the official "
                                f"'{expected}' or a converted copy of it).")
    return path


def _make_convnext(size: str, pretrained: Optional[bool], weights: Optional[str],
                   **kwargs: Any) -> DinoConvNeXt:
    if pretrained is False and weights is None:
        return DinoConvNeXt(arch=size, **kwargs)
    # Resolve the file before building, so a missing file fails fast.
    try:
        path = _resolve_weights(size, weights)
    except FileNotFoundError as err:
        if pretrained is not None or weights is not None:
            raise
        warn_random_init(f'dinov3_convnext_{size}', err)  # the default, without the file
        return DinoConvNeXt(arch=size, **kwargs)
    model = DinoConvNeXt(arch=size, **kwargs)
    # Official, HF transformers or timm layout, file or HF folder (converted on load).
    load_checkpoint_strict(model, path)
    return model


def dinov3_convnext_tiny(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                         **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Tiny (29M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('tiny', pretrained, weights, **kwargs)


def dinov3_convnext_small(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                          **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Small (50M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('small', pretrained, weights, **kwargs)


def dinov3_convnext_base(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                         **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Base (89M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('base', pretrained, weights, **kwargs)


def dinov3_convnext_large(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                          **kwargs: Any) -> DinoConvNeXt:
    """DINOv3 ConvNeXt-Large (198M). ``weights``: local path; extra kwargs go to
    :class:`DinoConvNeXt`."""
    return _make_convnext('large', pretrained, weights, **kwargs)
