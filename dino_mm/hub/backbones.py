"""Hub constructors named like the official DINOv2 / DINOv3 backbone entries.

Each takes ``(pretrained=None, weights=None, **kwargs)``. The default does what the official
hub's ``pretrained=True`` does -- load the official weights -- from a local file (see
:mod:`dino_mm.hub.utils`; nothing is downloaded); without the file it returns the random
init after a loud warning naming the file and where to put it. ``pretrained=True`` makes a
missing file a ``FileNotFoundError``; ``pretrained=False`` gives the official random init. kwargs override the arch (e.g.
``depth=2`` or ``out_type='featmap'``). ``weights`` is a local file or HF model folder
(official, HF transformers or timm layout, converted on load) or a weights tag; it is
loaded strictly with :func:`~dino_mm.models.backbones.load_checkpoint_strict`.
"""
import os.path as osp
import re
from typing import Optional

from dino_mm.models.backbones import DinoVisionTransformer, build_backbone_from_file
from .utils import WeightsRequest, resolve_entry_weights

__all__ = [
    'dinov2_vits14', 'dinov2_vitb14', 'dinov2_vitl14', 'dinov2_vitg14', 'dinov2_vits14_reg',
    'dinov2_vitb14_reg', 'dinov2_vitl14_reg', 'dinov2_vitg14_reg', 'dinov3_vits16',
    'dinov3_vits16plus', 'dinov3_vitb16', 'dinov3_vitl16', 'dinov3_vitl16plus',
    'dinov3_vith16plus', 'dinov3_vit7b16', 'BACKBONE_WEIGHTS'
]

# Official file names (docs/reference.md §2.1, §2.2).
BACKBONE_WEIGHTS = {}
for _s in 'sblg':
    _base = f'dinov2_vit{_s}14'
    BACKBONE_WEIGHTS[_base] = {'LVD142M': f'{_base}_pretrain.pth'}
    BACKBONE_WEIGHTS[_base + '_reg'] = {'LVD142M': f'{_base}_reg4_pretrain.pth'}
_V3_HASHES = {
    'vits16': {'LVD1689M': '08c60483'}, 'vits16plus': {'LVD1689M': '4057cbaa'},
    'vitb16': {'LVD1689M': '73cec8be'}, 'vitl16': {'LVD1689M': '8aa4cbdd', 'SAT493M': 'eadcf0ff'},
    'vitl16plus': {'LVD1689M': '46503df0'}, 'vith16plus': {'LVD1689M': '7c1da9a5'},
    'vit7b16': {'LVD1689M': 'a955f4ea', 'SAT493M': 'a6675841'},
}
for _a, _tags in _V3_HASHES.items():
    BACKBONE_WEIGHTS[f'dinov3_{_a}'] = {
        t: f'dinov3_{_a}_pretrain_{t.lower()}-{h}.pth' for t, h in _tags.items()}

# The ViT-L SAT-493M weights keep a separate local-crop class-token norm.
_UNTIED_LOCAL_NORM_HASHES = {'eadcf0ff'}


def _make(name: str, pretrained: Optional[bool], weights: Optional[str],
          **kwargs) -> DinoVisionTransformer:
    default = 'LVD142M' if name.startswith('dinov2') else 'LVD1689M'
    path = resolve_entry_weights(name, pretrained, [WeightsRequest(
        'backbone', weights, BACKBONE_WEIGHTS[name], default,
        explicit=weights is not None)])['backbone']
    if path is not None:
        match = re.search(r'-([0-9a-f]{8})\.pth$', osp.basename(path))
        if name == 'dinov3_vitl16' and match and match.group(1) in _UNTIED_LOCAL_NORM_HASHES:
            kwargs.setdefault('untie_global_and_local_cls_norm', True)
    if path is not None:  # the file's recorded architecture (if any), kwargs on top
        model = build_backbone_from_file(path, arch=name, **kwargs)
    else:
        model = DinoVisionTransformer(name, **kwargs)
    model.eval()
    return model


def _entry(name: str):
    def constructor(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                    **kwargs) -> DinoVisionTransformer:
        return _make(name, pretrained, weights, **kwargs)

    files = ', '.join(f'{t}: {f}' for t, f in BACKBONE_WEIGHTS[name].items())
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"""Official ``{name}`` backbone (``arch='{name}'``).

    Args:
        pretrained (bool, optional): Load the official weights from a local file
            ({files}) found in ``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights`` or
            torch.hub's checkpoint folder; never downloads. None (default, the official
            hub's behaviour): load them if the file is here, else warn loudly and return
            the random init. True: a missing file raises ``FileNotFoundError`` naming it.
            False: random init.
        weights (str, optional): A local checkpoint file or HF model folder (official,
            HF transformers or timm layout), or a weights tag among
            {sorted(BACKBONE_WEIGHTS[name])}. Implies loading.
        **kwargs: Override :class:`DinoVisionTransformer` arguments.
    """
    return constructor


dinov2_vits14 = _entry('dinov2_vits14')
dinov2_vitb14 = _entry('dinov2_vitb14')
dinov2_vitl14 = _entry('dinov2_vitl14')
dinov2_vitg14 = _entry('dinov2_vitg14')
dinov2_vits14_reg = _entry('dinov2_vits14_reg')
dinov2_vitb14_reg = _entry('dinov2_vitb14_reg')
dinov2_vitl14_reg = _entry('dinov2_vitl14_reg')
dinov2_vitg14_reg = _entry('dinov2_vitg14_reg')
dinov3_vits16 = _entry('dinov3_vits16')
dinov3_vits16plus = _entry('dinov3_vits16plus')
dinov3_vitb16 = _entry('dinov3_vitb16')
dinov3_vitl16 = _entry('dinov3_vitl16')
dinov3_vitl16plus = _entry('dinov3_vitl16plus')
dinov3_vith16plus = _entry('dinov3_vith16plus')
dinov3_vit7b16 = _entry('dinov3_vit7b16')
