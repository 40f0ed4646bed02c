"""Hub constructors for the official ImageNet-1k linear classifiers (``*_lc``,
docs/reference.md §2.4).

Each entry builds the matching backbone through :mod:`dino_mm.hub.backbones` and wraps it
in :class:`~dino_mm.models.heads.linear.DinoLinearClassifier`. As in the official hub, the
default loads the official head and backbone files, looked up locally by
:mod:`dino_mm.hub.utils` (nothing is downloaded); if either is missing, the default warns
loudly, naming every missing file, and returns the random init. ``pretrained=True`` makes a
missing file a ``FileNotFoundError``; ``pretrained=False`` gives random weights silently.
``weights`` / ``backbone_weights`` (a path or the tag ``'IMAGENET1K'`` / a backbone tag)
are always loaded.
"""
from typing import Optional

from dino_mm.models.heads.linear import DinoLinearClassifier
from . import backbones as _backbones
from .utils import WeightsRequest, resolve_entry_weights

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


def _make_lc(backbone_name: str, layers: int, pretrained: Optional[bool],
             weights: Optional[str], backbone_weights: Optional[str],
             **kwargs) -> DinoLinearClassifier:
    if backbone_name == 'dinov3_vit7b16' and layers != 1:
        raise ValueError('dinov3_vit7b16_lc has a single released head, on cat(cls, '
                         f'mean(patch)) of the last block: use layers=1 (got {layers})')
    name = f'{backbone_name}_lc'
    bb_files = _backbones.BACKBONE_WEIGHTS[backbone_name]
    paths = resolve_entry_weights(name, pretrained, [
        WeightsRequest('head', weights,
                       {'IMAGENET1K': linear_head_file_name(backbone_name, layers)},
                       'IMAGENET1K', explicit=weights is not None),
        WeightsRequest('backbone', backbone_weights, bb_files, next(iter(bb_files)),
                       explicit=backbone_weights is not None, arg='backbone_weights'),
    ])  # both files before building, so a missing one fails fast
    backbone = getattr(_backbones, backbone_name)(
        pretrained=paths['backbone'] is not None, weights=paths['backbone'], **kwargs)
    model = DinoLinearClassifier(backbone, layers=layers, num_classes=1000)
    if paths['head'] is not None:
        model.load_head(paths['head'])
    return model.eval()


def _entry(backbone_name: str, default_layers: int):
    def constructor(layers: int = default_layers, pretrained: Optional[bool] = None,
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
        pretrained (bool, optional): Load the official head and backbone files
            (``{next(iter(_backbones.BACKBONE_WEIGHTS[backbone_name].values()))}``) found in
            ``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights`` or torch.hub's checkpoint
            folder; never downloads. None (default, the official behaviour): load both if
            both are here, else warn loudly naming the missing files and return the random
            init. True: a missing file raises ``FileNotFoundError``. False: random init.
        weights (str, optional): Local head file or tag 'IMAGENET1K'; always loaded.
        backbone_weights (str, optional): Local backbone file or tag, passed to the
            backbone hub entry; always loaded.
        **kwargs: Override backbone arguments.
    """
    return constructor


for _s in 'sblg':
    for _reg in ('', '_reg'):
        globals()[f'dinov2_vit{_s}14{_reg}_lc'] = _entry(f'dinov2_vit{_s}14{_reg}', 4)
dinov3_vit7b16_lc = _entry('dinov3_vit7b16', 1)
