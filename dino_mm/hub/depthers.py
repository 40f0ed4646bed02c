"""Hub constructors of the official depth estimators: ``dinov2_vit{s,b,l,g}14_ld`` (linear
bins head on 1 or 4 layers), ``dinov2_vit{s,b,l,g}14_dd`` (DPT head) and
``dinov3_vit7b16_dd`` (SYNTHMIX-trained DPT).

Nothing is downloaded. ``weights`` names the training set ('NYU' or 'KITTI', as in the
official signature) or is a local head checkpoint; with ``pretrained=True`` the official head
and backbone files are looked up in ``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights`` and
``<torch hub dir>/checkpoints``, and a missing file raises an error naming it.
"""
import glob
import os
from typing import Any, List, Optional, Tuple

import torch

__all__ = [
    'dinov2_vits14_ld', 'dinov2_vitb14_ld', 'dinov2_vitl14_ld', 'dinov2_vitg14_ld',
    'dinov2_vits14_dd', 'dinov2_vitb14_dd', 'dinov2_vitl14_dd', 'dinov2_vitg14_dd',
    'dinov3_vit7b16_dd', 'depther_out_index'
]

# Official 4-layer selections (SPEC 5.5); 1 layer = the last block.
_V2_OUT_INDEX = {'s': [2, 5, 8, 11], 'b': [2, 5, 8, 11], 'l': [4, 11, 17, 23],
                 'g': [9, 19, 29, 39]}
_V2_DEPTH = {'s': 12, 'b': 12, 'l': 24, 'g': 40}
_V2_DIM = {'s': 384, 'b': 768, 'l': 1024, 'g': 1536}
_DEPTH_RANGES = {'NYU': (1e-3, 10.0), 'KITTI': (1e-3, 80.0)}


def depther_out_index(size: str, layers: int = 4) -> List[int]:
    """Backbone blocks feeding the DINOv2 depth heads of ViT-``size`` (s, b, l, g)."""
    if layers == 4:
        return list(_V2_OUT_INDEX[size])
    if layers == 1:
        return [_V2_DEPTH[size] - 1]
    raise ValueError(f'layers must be 1 or 4, got {layers}.')


def _search_dirs() -> List[str]:
    dirs = [os.environ.get('DINO_MM_WEIGHTS'), os.path.expanduser('~/.cache/dino_mm/weights'),
            os.path.join(torch.hub.get_dir(), 'checkpoints')]
    return [d for d in dirs if d]


def _find(pattern: str, what: str, entry: str) -> str:
    for d in _search_dirs():
        hits = sorted(glob.glob(os.path.join(d, pattern)))
        if hits:
            return hits[0]
    raise FileNotFoundError(
        f'{entry}(pretrained=True) needs the official {what} file {pattern!r}, which cannot be '
        f'downloaded here. Put it in one of {_search_dirs()} (or set $DINO_MM_WEIGHTS), or pass '
        'its path explicitly (weights=<head file>, backbone_weights=<backbone file>), or use '
        'pretrained=False for random weights.')


def _local_file(path: str, what: str) -> str:
    path = os.path.expanduser(str(path))
    if path.startswith(('http://', 'https://')):
        raise ValueError(f'{what} {path!r}: URLs cannot be fetched offline; download the file '
                         'and pass its local path.')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist.')
    return path


def _dataset_and_range(
        weights: Optional[str], depth_range: Optional[Tuple[float, float]],
        pretrained: bool) -> Tuple[Optional[str], Optional[str], Tuple[float, float]]:
    """(dataset name, head file path or None, depth range) from the official arguments."""
    dataset, head_path = None, None
    if weights is None or str(weights).upper() in _DEPTH_RANGES:
        dataset = str(weights or 'NYU').upper()
    else:
        head_path = _local_file(weights, 'weights')
    if depth_range is None:
        # Official default: KITTI range only for KITTI weights; NYU range otherwise.
        depth_range = _DEPTH_RANGES['KITTI'] if (pretrained and dataset == 'KITTI') \
            else _DEPTH_RANGES['NYU']
    return dataset, head_path, tuple(depth_range)


def _load_head(model: torch.nn.Module, path: str) -> None:
    """Load an official depth-head checkpoint (``{'state_dict': {'decode_head.*': ...}}``).

    The official loader only defines its state dict inside ``if 'state_dict' in ckpt``
    (NameError otherwise); a bare state dict is accepted here too.
    """
    obj = torch.load(path, map_location='cpu', weights_only=True)
    sd = obj.get('state_dict', obj) if isinstance(obj, dict) else obj
    sd = {k: v for k, v in sd.items() if k.startswith('decode_head.')}
    if not sd:
        raise KeyError(f'{path}: no decode_head.* key; is this a depth head checkpoint?')
    target = model.state_dict()
    expected = {k for k in target if k.startswith('decode_head.')}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    bad = sorted(k for k in set(sd) & expected if sd[k].shape != target[k].shape)
    if missing or unexpected or bad:
        raise RuntimeError(
            f'Depth head checkpoint {path} does not match the model: missing {missing[:10]}, '
            f'unexpected {unexpected[:10]}, mis-shaped '
            f'{[(k, tuple(sd[k].shape), tuple(target[k].shape)) for k in bad[:10]]}.')
    model.load_state_dict(sd, strict=False)


def _load_backbone(model: torch.nn.Module, path: str) -> None:
    from dino_mm.models.backbones.utils import load_checkpoint_strict
    load_checkpoint_strict(model.backbone, path)


def _build(backbone: dict, head: dict) -> torch.nn.Module:
    from dino_mm.models.depth import DinoDepthEstimator
    model = DinoDepthEstimator(backbone=backbone, decode_head=head)
    model.eval()
    return model


def _make_dinov2_depther(size: str, head: str, *, layers: int = 4, pretrained: bool = False,
                         weights: Optional[str] = 'NYU',
                         depth_range: Optional[Tuple[float, float]] = None,
                         backbone_weights: Optional[str] = None,
                         official_bins_quirk: bool = True, **kwargs: Any) -> torch.nn.Module:
    entry = f'dinov2_vit{size}14_{"ld" if head == "linear" else "dd"}'
    dataset, head_path, (min_depth, max_depth) = _dataset_and_range(weights, depth_range,
                                                                    pretrained)
    out_index = depther_out_index(size, layers if head == 'linear' else 4)
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
        suffix = f'linear{"4" if layers == 4 else ""}'
    else:
        dec = dict(type='dino_mm.DPTDepthHead', embed_dims=embed_dim, channels=256,
                   post_process_channels=[embed_dim // 2**(3 - i) for i in range(4)],
                   readout_type='project', min_depth=min_depth, max_depth=max_depth,
                   loss_decode=[])
        suffix = 'dpt'
    # Files are resolved before building so a missing file fails fast (ViT-g is large).
    bb_path = None
    if pretrained or backbone_weights is not None:
        bb_path = (_local_file(backbone_weights, 'backbone_weights') if backbone_weights
                   else _find(f'dinov2_vit{size}14_pretrain.pth', 'backbone', entry))
    if pretrained and head_path is None:
        head_path = _find(f'dinov2_vit{size}14_{dataset.lower()}_{suffix}_head.pth',
                          'depth head', entry)
    model = _build(backbone, dec)
    if bb_path is not None:
        _load_backbone(model, bb_path)
    if head_path is not None:
        _load_head(model, head_path)
    return model


def _ld(size):
    def fn(*, layers: int = 4, pretrained: bool = False, weights: Optional[str] = 'NYU',
           depth_range: Optional[Tuple[float, float]] = None,
           backbone_weights: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
        return _make_dinov2_depther(size, 'linear', layers=layers, pretrained=pretrained,
                                    weights=weights, depth_range=depth_range,
                                    backbone_weights=backbone_weights, **kwargs)

    fn.__name__ = fn.__qualname__ = f'dinov2_vit{size}14_ld'
    fn.__doc__ = (f"""DINOv2 ViT-{size.upper()}/14 with the linear depth head (official ``_ld``).

    Args:
        layers (int): 4 (blocks {_V2_OUT_INDEX[size]}) or 1 (last block). Defaults to 4.
        pretrained (bool): Load the official backbone and head files (local). Defaults to False.
        weights (str): 'NYU', 'KITTI' or a local head checkpoint. Defaults to 'NYU'.
        depth_range (tuple, optional): Ignored by the official linear head (bins always
            0.001..80) unless ``official_bins_quirk=False``.
        backbone_weights (str, optional): Local backbone checkpoint.
        **kwargs: Backbone overrides (``official_bins_quirk`` is taken out first).
    """)
    return fn


def _dd(size):
    def fn(*, pretrained: bool = False, weights: Optional[str] = 'NYU',
           depth_range: Optional[Tuple[float, float]] = None,
           backbone_weights: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
        return _make_dinov2_depther(size, 'dpt', pretrained=pretrained, weights=weights,
                                    depth_range=depth_range, backbone_weights=backbone_weights,
                                    **kwargs)

    fn.__name__ = fn.__qualname__ = f'dinov2_vit{size}14_dd'
    fn.__doc__ = (f"""DINOv2 ViT-{size.upper()}/14 with the DPT depth head (official ``_dd``),
    blocks {_V2_OUT_INDEX[size]}.

    Args:
        pretrained (bool): Load the official backbone and head files (local). Defaults to False.
        weights (str): 'NYU', 'KITTI' or a local head checkpoint. Defaults to 'NYU'.
        depth_range (tuple, optional): Defaults to (0.001, 10) for NYU / random weights and
            (0.001, 80) for KITTI.
        backbone_weights (str, optional): Local backbone checkpoint.
        **kwargs: Backbone overrides.
    """)
    return fn


dinov2_vits14_ld, dinov2_vitb14_ld = _ld('s'), _ld('b')
dinov2_vitl14_ld, dinov2_vitg14_ld = _ld('l'), _ld('g')
dinov2_vits14_dd, dinov2_vitb14_dd = _dd('s'), _dd('b')
dinov2_vitl14_dd, dinov2_vitg14_dd = _dd('l'), _dd('g')


def dinov3_vit7b16_dd(*, pretrained: bool = False, weights: Optional[str] = None,
                      backbone_weights: Optional[str] = None,
                      depth_range: Tuple[float, float] = (1e-3, 100.0),
                      **kwargs: Any) -> torch.nn.Module:
    """DINOv3 ViT-7B/16 with the SYNTHMIX-trained DPT depther (official ``dinov3_vit7b16_dd``):
    blocks [9, 19, 29, 39] with the backbone norm, no class token, DPT channels 512,
    post-process channels [2048]*4, BatchNorm, 256 bins over ``depth_range``.

    Args:
        pretrained (bool): Load the official files (local only). Defaults to False.
        weights (str, optional): Local head checkpoint; default: search for
            ``dinov3_vit7b16_synthmix_dpt_head*.pth``.
        backbone_weights (str, optional): Local backbone checkpoint; default: search for
            ``dinov3_vit7b16_pretrain_lvd1689m*.pth``.
        depth_range (tuple): Defaults to (0.001, 100).
        **kwargs: Backbone overrides.
    """
    entry = 'dinov3_vit7b16_dd'
    out_index = kwargs.pop('out_indices', [9, 19, 29, 39])
    backbone = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16',
                    out_indices=out_index, out_type='featmap', norm_out=True, **kwargs)
    embed_dim = kwargs.get('embed_dim', 4096)
    dec = dict(type='dino_mm.DPTDepthHead', embed_dims=embed_dim, channels=512,
               post_process_channels=[2048] * 4, readout_type='ignore', patch_size=16,
               norm_cfg=dict(type='BN'), classify=True, n_bins=256, bins_strategy='UD',
               norm_strategy='linear', min_depth=depth_range[0], max_depth=depth_range[1],
               loss_decode=[])
    bb_path = head_path = None
    if pretrained or backbone_weights is not None:
        bb_path = (_local_file(backbone_weights, 'backbone_weights') if backbone_weights
                   else _find('dinov3_vit7b16_pretrain_lvd1689m*.pth', 'backbone', entry))
    if pretrained or weights is not None:
        head_path = (_local_file(weights, 'weights') if weights
                     else _find('dinov3_vit7b16_synthmix_dpt_head*.pth', 'depth head', entry))
    model = _build(backbone, dec)
    if bb_path is not None:
        _load_backbone(model, bb_path)
    if head_path is not None:
        _load_head(model, head_path)
    return model
