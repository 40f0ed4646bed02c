"""Hub constructors for the official ImageNet-1k linear classifiers (``*_lc``, SPEC §5.4).

Each entry builds the matching backbone through :mod:`dino_mm.hub.backbones` and wraps it
in :class:`~dino_mm.models.heads.linear.DinoLinearClassifier`. Files are local only:
``weights`` / ``backbone_weights`` are paths or the tag ``'IMAGENET1K'`` / ``'LVD142M'``
(resolved in ``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights`` or torch.hub's checkpoint
folder); a missing file raises ``FileNotFoundError`` naming the expected official file.
"""
from typing import Optional

import torch

from dino_mm.models.heads.linear import DinoLinearClassifier
from . import backbones as _backbones
from .utils import resolve_weights

__all__ = [
    'dinov2_vits14_lc', 'dinov2_vitb14_lc', 'dinov2_vitl14_lc', 'dinov2_vitg14_lc',
    'dinov2_vits14_reg_lc', 'dinov2_vitb14_reg_lc', 'dinov2_vitl14_reg_lc',
    'dinov2_vitg14_reg_lc', 'dinov3_vit7b16_lc', 'linear_head_file_name'
]

_V3_7B_HEAD = 'dinov3_vit7b16_imagenet1k_linear_head-90d8ed92.pth'


def linear_head_file_name(backbone_name: str, layers: int = 4) -> str:
    """Official head file name, e.g. ``dinov2_vits14_reg4_linear4_head.pth``."""
    if backbone_name == 'dinov3_vit7b16':
        return _V3_7B_HEAD
    full = backbone_name.replace('_reg', '_reg4')
    return f'{full}_linear{"4" if layers == 4 else ""}_head.pth'


def _make_lc(backbone_name: str, layers: int, pretrained: bool, weights: Optional[str],
             backbone_weights: Optional[str], **kwargs) -> DinoLinearClassifier:
    if backbone_name == 'dinov3_vit7b16' and layers != 1:
        raise ValueError('dinov3_vit7b16_lc has a single released head, on cat(cls, '
                         f'mean(patch)) of the last block: use layers=1 (got {layers})')
    backbone = getattr(_backbones, backbone_name)(
        pretrained=pretrained and backbone_weights is None, weights=backbone_weights,
        **kwargs)
    model = DinoLinearClassifier(backbone, layers=layers, num_classes=1000)
    if pretrained or weights is not None:
        head_file = linear_head_file_name(backbone_name, layers)
        path = resolve_weights(f'{backbone_name}_lc', weights, {'IMAGENET1K': head_file},
                               'IMAGENET1K')
        model.load_head(path)
    return model.eval()


def _entry(backbone_name: str, default_layers: int):
    def constructor(layers: int = default_layers, pretrained: bool = False,
                    weights: Optional[str] = None, backbone_weights: Optional[str] = None,
                    **kwargs) -> DinoLinearClassifier:
        return _make_lc(backbone_name, layers, pretrained, weights, backbone_weights,
                        **kwargs)

    name = f'{backbone_name}_lc'
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"""Official ``{name}``: {backbone_name} + ImageNet-1k linear head.

    Args:
        layers (int): 4 (``{linear_head_file_name(backbone_name, 4)}``) or 1
            (``{linear_head_file_name(backbone_name, 1)}``). Defaults to {default_layers}.
        pretrained (bool): Load the head and the backbone from local official files.
            Defaults to False.
        weights (str, optional): Local head file or tag 'IMAGENET1K'; implies loading
            the head.
        backbone_weights (str, optional): Local backbone file or tag, passed to the
            backbone hub entry; implies loading the backbone.
        **kwargs: Override backbone arguments.
    """
    return constructor


for _s in 'sblg':
    for _reg in ('', '_reg'):
        globals()[f'dinov2_vit{_s}14{_reg}_lc'] = _entry(f'dinov2_vit{_s}14{_reg}', 4)
dinov3_vit7b16_lc = _entry('dinov3_vit7b16', 1)
