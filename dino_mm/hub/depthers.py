"""Hub constructors of the official depth estimators: ``dinov2_vit{s,b,l,g}14_ld`` (linear
bins head on 1 or 4 layers), ``dinov2_vit{s,b,l,g}14_dd`` (DPT head), ``dinov3_vit7b16_dd``
(SYNTHMIX-trained DPT) and ``dinov3_vitl16_chmv2`` (canopy heights from satellite images).

As in the official hub, the default loads the official head and backbone files, looked up
locally by :mod:`dino_mm.hub.utils` (``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights``,
``<torch hub dir>/checkpoints``; nothing is downloaded); if either is missing, the default
warns loudly, naming every missing file, and returns the random init. ``pretrained=True``
makes a missing file a ``FileNotFoundError`` naming it; ``pretrained=False`` gives random
weights silently. ``weights`` names the training set of the head file ('NYU' or 'KITTI',
'SYNTHMIX' for the DINOv3 depther, 'CHMV2' for the canopy-height head, as in the official
signatures) or is a local head checkpoint, which is always loaded; so is
``backbone_weights`` (a local file or tag).
"""
import os.path as osp
from typing import Any, Dict, List, Optional, Tuple

import torch

from .backbones import BACKBONE_WEIGHTS
from .utils import WeightsRequest, resolve_entry_weights

__all__ = [
    'dinov2_vits14_ld', 'dinov2_vitb14_ld', 'dinov2_vitl14_ld', 'dinov2_vitg14_ld',
    'dinov2_vits14_dd', 'dinov2_vitb14_dd', 'dinov2_vitl14_dd', 'dinov2_vitg14_dd',
    'dinov3_vit7b16_dd', 'dinov3_vitl16_chmv2', 'depther_out_index'
]

# Official 4-layer selections (docs/reference.md §2.5); 1 layer = the last block.
_V2_OUT_INDEX = {'s': [2, 5, 8, 11], 'b': [2, 5, 8, 11], 'l': [4, 11, 17, 23],
                 'g': [9, 19, 29, 39]}
_V2_DEPTH = {'s': 12, 'b': 12, 'l': 24, 'g': 40}
_V2_DIM = {'s': 384, 'b': 768, 'l': 1024, 'g': 1536}
_DEPTH_RANGES = {'NYU': (1e-3, 10.0), 'KITTI': (1e-3, 80.0)}
# The official SYNTHMIX DPT head of the DINOv3 ViT-7B (hash of the released file).
_V3_7B_DPT_HEAD = 'dinov3_vit7b16_synthmix_dpt_head-02040be1.pth'
# The official CHMv2 DPT head (``<base url>/chmv2/dinov3_vitl16_chmv2_dpt_head-3703d643.pth``)
# on the SAT-493M ViT-L backbone.
_V3_CHMV2_HEAD = 'dinov3_vitl16_chmv2_dpt_head-3703d643.pth'


def depther_out_index(size: str, layers: int = 4) -> List[int]:
    """Backbone blocks feeding the DINOv2 depth heads of ViT-``size`` (s, b, l, g)."""
    if layers == 4:
        return list(_V2_OUT_INDEX[size])
    if layers == 1:
        return [_V2_DEPTH[size] - 1]
    raise ValueError(f'layers must be 1 or 4, got {layers}.')


def _head_request(weights: Optional[str], file_names: Dict[str, str],
                  default: str) -> WeightsRequest:
    """A dataset tag selects the official head file (loaded as ``pretrained`` says); any
    other value is the user's own file, always loaded."""
    is_tag = weights is None or str(weights).upper() in file_names
    return WeightsRequest('head', default if weights is None else weights, file_names,
                          default, explicit=not is_tag)


def _backbone_request(arch: str, backbone_weights: Optional[str]) -> WeightsRequest:
    files = BACKBONE_WEIGHTS[arch]
    return WeightsRequest('backbone', backbone_weights, files, next(iter(files)),
                          explicit=backbone_weights is not None, arg='backbone_weights')


def _load_head(model: torch.nn.Module, path: str) -> None:
    """Load a depth-head checkpoint strictly into ``model.decode_head``.

    Official DINOv2 head files are ``{'state_dict': {'decode_head.*': ...}}`` (the official
    loader only defines its state dict inside ``if 'state_dict' in ckpt``; a bare
    ``decode_head.*`` state dict is accepted too); official DINOv3 head files (CHMv2, 7B)
    are the bare state dict of ``depther.decoder``. See
    :func:`dino_mm.models.depth.decode_head.load_depth_head`.
    """
    from dino_mm.models.depth.decode_head import load_depth_head
    load_depth_head(model.decode_head, path)


def _load_backbone(model: torch.nn.Module, path: str) -> None:
    from dino_mm.models.backbones.utils import load_checkpoint_strict
    load_checkpoint_strict(model.backbone, path)


def _build(backbone: dict, head: dict) -> torch.nn.Module:
    from dino_mm.models.depth import DinoDepthEstimator
    model = DinoDepthEstimator(backbone=backbone, decode_head=head)
    model.eval()
    return model


def _make_dinov2_depther(size: str, head: str, *, layers: int = 4,
                         pretrained: Optional[bool] = None, weights: Optional[str] = 'NYU',
                         depth_range: Optional[Tuple[float, float]] = None,
                         backbone_weights: Optional[str] = None,
                         official_bins_quirk: bool = True, **kwargs: Any) -> torch.nn.Module:
    entry = f'dinov2_vit{size}14_{"ld" if head == "linear" else "dd"}'
    out_index = depther_out_index(size, layers if head == 'linear' else 4)
    suffix = f'linear{"4" if layers == 4 else ""}' if head == 'linear' else 'dpt'
    head_files = {ds: f'dinov2_vit{size}14_{ds.lower()}_{suffix}_head.pth'
                  for ds in _DEPTH_RANGES}
    head_req = _head_request(weights, head_files, 'NYU')
    dataset = None if head_req.explicit else str(head_req.weights).upper()
    # Files are resolved before building so a missing file fails fast (ViT-g is large).
    paths = resolve_entry_weights(entry, pretrained, [
        head_req, _backbone_request(f'dinov2_vit{size}14', backbone_weights)])
    if depth_range is None:
        # Official default: KITTI range only for the KITTI weights; NYU range otherwise.
        depth_range = _DEPTH_RANGES['KITTI' if paths['head'] and dataset == 'KITTI'
                                    else 'NYU']
    min_depth, max_depth = tuple(depth_range)
    embed_dim = kwargs.get('embed_dim', _V2_DIM[size])
    backbone = dict(type='dino_mm.DinoVisionTransformer', arch=f'dinov2_vit{size}14',
                    out_indices=out_index, out_type='cls_featmap', norm_out=False, **kwargs)
    if head == 'linear':
        # The official _ld heads always place the bins between 0.001 and 80 and ignore
        # depth_range; official_bins_quirk=False honours depth_range instead.
        dec = dict(type='dino_mm.LinearDepthHead', in_channels=[2 * embed_dim] * len(out_index),
                   in_index=list(range(len(out_index))), upsample=4, classify=True,
                   n_bins=256, bins_strategy='UD', norm_strategy='linear',
                   min_depth=min_depth, max_depth=max_depth,
                   hub_bins_quirk=official_bins_quirk, loss_decode=[])
    else:
        dec = dict(type='dino_mm.DPTDepthHead', embed_dims=embed_dim, channels=256,
                   post_process_channels=[embed_dim // 2**(3 - i) for i in range(4)],
                   readout_type='project', min_depth=min_depth, max_depth=max_depth,
                   loss_decode=[])
    return _build_and_load(backbone, dec, paths)


def _build_and_load(backbone: dict, head: dict,
                    paths: Dict[str, Optional[str]]) -> torch.nn.Module:
    model = _build(backbone, head)
    if paths['backbone'] is not None:
        _load_backbone(model, paths['backbone'])
    if paths['head'] is not None:
        _load_head(model, paths['head'])
    return model


def _ld(size):
    def fn(*, layers: int = 4, pretrained: Optional[bool] = None,
           weights: Optional[str] = 'NYU',
           depth_range: Optional[Tuple[float, float]] = None,
           backbone_weights: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
        return _make_dinov2_depther(size, 'linear', layers=layers, pretrained=pretrained,
                                    weights=weights, depth_range=depth_range,
                                    backbone_weights=backbone_weights, **kwargs)

    fn.__name__ = fn.__qualname__ = f'dinov2_vit{size}14_ld'
    fn.__doc__ = (f"""DINOv2 ViT-{size.upper()}/14 with the linear depth head (official ``_ld``).

    Args:
        layers (int): 4 (blocks {_V2_OUT_INDEX[size]}) or 1 (last block). Defaults to 4.
        pretrained (bool, optional): Load the official head and backbone files (local, see
            the module docstring). None (default): load them if both are here, else warn
            loudly and return random weights. True: a missing file raises. False: random.
        weights (str): 'NYU', 'KITTI' (selects the official head file) or a local head
            checkpoint (always loaded). Defaults to 'NYU'.
        depth_range (tuple, optional): Ignored by the official linear head (bins always
            0.001..80) unless ``official_bins_quirk=False``.
        backbone_weights (str, optional): Local backbone checkpoint or tag (always loaded).
        **kwargs: Backbone overrides (``official_bins_quirk`` is taken out first).
    """)
    return fn


def _dd(size):
    def fn(*, pretrained: Optional[bool] = None, weights: Optional[str] = 'NYU',
           depth_range: Optional[Tuple[float, float]] = None,
           backbone_weights: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
        return _make_dinov2_depther(size, 'dpt', pretrained=pretrained, weights=weights,
                                    depth_range=depth_range, backbone_weights=backbone_weights,
                                    **kwargs)

    fn.__name__ = fn.__qualname__ = f'dinov2_vit{size}14_dd'
    fn.__doc__ = (f"""DINOv2 ViT-{size.upper()}/14 with the DPT depth head (official ``_dd``),
    blocks {_V2_OUT_INDEX[size]}.

    Args:
        pretrained (bool, optional): Load the official head and backbone files (local, see
            the module docstring). None (default): load them if both are here, else warn
            loudly and return random weights. True: a missing file raises. False: random.
        weights (str): 'NYU', 'KITTI' (selects the official head file) or a local head
            checkpoint (always loaded). Defaults to 'NYU'.
        depth_range (tuple, optional): Defaults to (0.001, 10) for NYU / random weights and
            (0.001, 80) for the loaded KITTI head.
        backbone_weights (str, optional): Local backbone checkpoint or tag (always loaded).
        **kwargs: Backbone overrides.
    """)
    return fn


dinov2_vits14_ld, dinov2_vitb14_ld = _ld('s'), _ld('b')
dinov2_vitl14_ld, dinov2_vitg14_ld = _ld('l'), _ld('g')
dinov2_vits14_dd, dinov2_vitb14_dd = _dd('s'), _dd('b')
dinov2_vitl14_dd, dinov2_vitg14_dd = _dd('l'), _dd('g')


def dinov3_vit7b16_dd(*, pretrained: Optional[bool] = None, weights: Optional[str] = None,
                      backbone_weights: Optional[str] = None,
                      depth_range: Tuple[float, float] = (1e-3, 100.0),
                      **kwargs: Any) -> torch.nn.Module:
    """DINOv3 ViT-7B/16 with the SYNTHMIX-trained DPT depther (official ``dinov3_vit7b16_dd``):
    blocks [9, 19, 29, 39] with the backbone norm, no class token, DPT channels 512,
    post-process channels [2048]*4, BatchNorm, 256 bins over ``depth_range``.

    Args:
        pretrained (bool, optional): Load the official files
            ``dinov3_vit7b16_synthmix_dpt_head-02040be1.pth`` and
            ``dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth`` (local only). None
            (default): load them if both are here, else warn loudly and return random
            weights. True: a missing file raises. False: random.
        weights (str, optional): 'SYNTHMIX' (the default, the official head file) or a
            local head checkpoint (always loaded).
        backbone_weights (str, optional): Local backbone checkpoint or tag (always loaded).
        depth_range (tuple): Defaults to (0.001, 100).
        **kwargs: Backbone overrides.
    """
    entry = 'dinov3_vit7b16_dd'
    paths = resolve_entry_weights(entry, pretrained, [  # before building: fail fast
        _head_request(weights, {'SYNTHMIX': _V3_7B_DPT_HEAD}, 'SYNTHMIX'),
        _backbone_request('dinov3_vit7b16', backbone_weights)])
    out_index = kwargs.pop('out_indices', [9, 19, 29, 39])
    backbone = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16',
                    out_indices=out_index, out_type='featmap', norm_out=True, **kwargs)
    embed_dim = kwargs.get('embed_dim', 4096)
    dec = dict(type='dino_mm.DPTDepthHead', embed_dims=embed_dim, channels=512,
               post_process_channels=[2048] * 4, readout_type='ignore', patch_size=16,
               norm_cfg=dict(type='BN'), classify=True, n_bins=256, bins_strategy='UD',
               norm_strategy='linear', min_depth=depth_range[0], max_depth=depth_range[1],
               loss_decode=[])
    return _build_and_load(backbone, dec, paths)


def dinov3_vitl16_chmv2(*, pretrained: Optional[bool] = None, weights: Optional[str] = None,
                        backbone_weights: Optional[str] = None,
                        **kwargs: Any) -> torch.nn.Module:
    """DINOv3 ViT-L/16 (SAT-493M) with the CHMv2 canopy-height DPT head (official
    ``dinov3_vitl16_chmv2``): blocks [5, 11, 17, 23] with the backbone norm and the class
    token (readout 'project'), 256 ``chmv2_mixlog`` bins over 0.001 .. 96 m (see
    :mod:`dino_mm.models.depth.chmv2`). Inputs are normalised with the CHMv2 mean / std
    (``dino_mm.models.depth.chmv2.predict_canopy_height`` runs the official notebook's
    inference on an image tensor); predictions are canopy heights in metres.

    Args:
        pretrained (bool, optional): Load the official files
            ``dinov3_vitl16_chmv2_dpt_head-3703d643.pth`` and
            ``dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth`` (local only). None (default):
            load them if both are here, else warn loudly and return random weights.
            True: a missing file raises. False: random.
        weights (str, optional): 'CHMV2' (the default, the official head file) or a local
            head checkpoint (always loaded; the official bare layout or ``decode_head.*``).
        backbone_weights (str, optional): Local backbone checkpoint or tag ('SAT493M',
            the official default, or 'LVD1689M'), always loaded.
        **kwargs: Backbone overrides (``depth``, ``embed_dim``, ``num_heads``,
            ``out_indices``, ...). The head widths are the official ones; they follow
            ``embed_dim`` only through the readout and projection input widths.
    """
    from dino_mm.models.depth import DinoDepthEstimator
    from dino_mm.models.depth.chmv2 import CHMV2_OUT_INDICES, chmv2_head_cfg, chmv2_model_cfg
    from .backbones import _UNTIED_LOCAL_NORM_HASHES
    entry = 'dinov3_vitl16_chmv2'
    files = BACKBONE_WEIGHTS['dinov3_vitl16']
    paths = resolve_entry_weights(entry, pretrained, [  # before building: fail fast
        _head_request(weights, {'CHMV2': _V3_CHMV2_HEAD}, 'CHMV2'),
        WeightsRequest('backbone', backbone_weights, files, 'SAT493M',
                       explicit=backbone_weights is not None, arg='backbone_weights')])
    # The SAT-493M ViT-L keeps a separate (training-only) local-crop class-token norm: the
    # official entry builds it for the SAT493M tag and for files with that hash.
    chosen = paths['backbone'] or str(backbone_weights or 'SAT493M')
    untied = chosen.upper() == 'SAT493M' or any(
        f'-{h}.' in osp.basename(chosen) for h in _UNTIED_LOCAL_NORM_HASHES)
    kwargs.setdefault('untie_global_and_local_cls_norm', untied)
    out_index = kwargs.pop('out_indices', list(CHMV2_OUT_INDICES))
    cfg = chmv2_model_cfg(out_indices=out_index,
                          head=chmv2_head_cfg(embed_dims=kwargs.get('embed_dim', 1024)),
                          **kwargs)
    cfg.pop('type')
    model = DinoDepthEstimator(**cfg)
    model.eval()
    if paths['backbone'] is not None:
        _load_backbone(model, paths['backbone'])
    if paths['head'] is not None:
        _load_head(model, paths['head'])
    return model
