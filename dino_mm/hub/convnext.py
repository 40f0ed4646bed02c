"""Hub constructors for the DINOv3 ConvNeXts, named like the official hub entries.

As in the official hub, the default loads the official weights; no weights can be
downloaded here: ``weights`` is a local file (official, HF transformers or timm layout), a
HF model folder or a directory holding the official file. With the default
``pretrained=None`` and no file, the random init is returned after a loud warning naming
the file; ``pretrained=True`` without it raises an error naming the file to get;
``pretrained=False`` gives the random init.
"""
from typing import Any, Optional

from dino_mm.models.backbones.convnext import DinoConvNeXt
from dino_mm.models.backbones.utils import load_checkpoint_strict
from .utils import WeightsRequest, resolve_entry_weights

__all__ = [
    'dinov3_convnext_tiny', 'dinov3_convnext_small', 'dinov3_convnext_base',
    'dinov3_convnext_large'
]

# 8-hex-digit suffixes of the released LVD-1689M files (docs/reference.md §1.11).
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


def _make_convnext(size: str, pretrained: Optional[bool], weights: Optional[str],
                   **kwargs: Any) -> DinoConvNeXt:
    name = f'dinov3_convnext_{size}'
    files = {'LVD1689M': official_convnext_filename(size)}
    # Resolved before building, so a missing file fails fast.
    path = resolve_entry_weights(name, pretrained, [WeightsRequest(
        'backbone', weights, files, 'LVD1689M', explicit=weights is not None)])['backbone']
    model = DinoConvNeXt(arch=size, **kwargs)
    if path is not None:
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
