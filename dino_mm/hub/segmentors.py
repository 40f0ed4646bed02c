"""Hub constructors for the DINOv2 / DINOv3 semantic segmentors (mmseg models).

Names follow the official head files: ``dinov2_vit{s,b,l,g}14_{ade20k,voc2012}_{linear,ms}``
(heads ``{backbone}_{dataset}_{linear|ms}_head.pth``), ``dinov2_vitg14_ade20k_m2f`` and the
DINOv3 hub name ``dinov3_vit7b16_ms`` (ADE20K Mask2Former). Each returns a
``dino_mm.DinoEncoderDecoder`` in eval mode.

As in the official hub, the default loads the official files -- the head and the backbone,
or the whole segmentor for ``dinov2_vitg14_ade20k_m2f`` -- looked up locally by
:mod:`dino_mm.hub.utils` (``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights``, torch.hub's
checkpoint folder; nothing is ever downloaded); if any is missing, the default warns loudly,
naming every missing file, and returns the random init. ``pretrained=True`` makes a missing
file a ``FileNotFoundError`` naming it and where to put it; ``pretrained=False`` gives
random weights silently. ``weights`` (the head or full segmentor checkpoint) and
``backbone_weights`` (the backbone file), when given, are always loaded.
"""
from typing import Dict, Optional

import torch.nn as nn
from mmengine.config import ConfigDict

from .backbones import BACKBONE_WEIGHTS
from .utils import WeightsRequest, resolve_entry_weights

__all__ = []

_V2 = {  # name: (arch, embed_dim, depth)
    's': ('dinov2_vits14', 384, 12),
    'b': ('dinov2_vitb14', 768, 12),
    'l': ('dinov2_vitl14', 1024, 24),
    'g': ('dinov2_vitg14', 1536, 40),
}
_NUM_CLASSES = {'ade20k': 150, 'voc2012': 21}
_V3_7B_M2F_HEAD = 'dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth'
#: Sizes of the official DINOv3 segmentor, fixed in its code whatever the hidden width:
#: ``DINOv3_Adapter(deform_num_heads=16)`` (``eval/segmentation/models/backbone/
#: dinov3_adapter.py``); pixel decoder ``transformer_nheads=16``,
#: ``transformer_dim_feedforward=4096``, 6 layers; decoder ``nheads=16``,
#: ``dim_feedforward=4096``, 9 layers, 100 queries (``heads/mask2former_head.py``).
V3_M2F_SIZES = dict(deform_num_heads=16, attn_heads=16, ffn=4096, num_queries=100)


def _resolve(entry: str, pretrained: Optional[bool], weights: Optional[str],
             head_file: str, backbone_weights: Optional[str] = None,
             backbone_arch: Optional[str] = None,
             what: str = 'head', tag: str = 'ADE20K') -> Dict[str, Optional[str]]:
    """The entry's files (``what``, the official ``head_file`` of dataset ``tag``, and with
    ``backbone_arch`` the ``'backbone'``), resolved before building so that a missing file
    fails fast."""
    requests = [WeightsRequest(what, weights, {tag: head_file}, tag,
                               explicit=weights is not None)]
    if backbone_arch is not None:
        files = BACKBONE_WEIGHTS[backbone_arch]
        requests.append(WeightsRequest('backbone', backbone_weights, files,
                                       next(iter(files)),
                                       explicit=backbone_weights is not None,
                                       arg='backbone_weights'))
    return resolve_entry_weights(entry, pretrained, requests)


def _load_backbone(backbone: nn.Module, path: str) -> None:
    """The official backbone file (any layout the backbone loader reads), strictly."""
    from dino_mm.models.backbones.utils import load_checkpoint_strict
    load_checkpoint_strict(backbone, path)


def _linear_model(arch: str, dim: int, depth: int, num_classes: int, head: str,
                  backbone_kwargs: Dict) -> nn.Module:
    from dino_mm.models.segmentation import DinoEncoderDecoder  # noqa: F401 (registers)
    from dino_mm.registry import MODELS
    n_layers = 1 if head == 'linear' else 4
    depth = backbone_kwargs.get('depth', depth)
    dim = backbone_kwargs.get('embed_dim', dim)
    test_cfg = dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    if head == 'ms':
        test_cfg.update(img_ratios=[1.0, 1.32, 1.73, 2.28, 3.0], flip=True)
    cfg = dict(
        type='dino_mm.DinoEncoderDecoder',
        data_preprocessor=dict(
            type='mmseg.SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
        freeze_backbone=True,
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch=arch,
                      out_indices=list(range(depth - n_layers, depth)), out_type='featmap',
                      **backbone_kwargs),
        decode_head=dict(
            type='dino_mm.DinoLinearHead', in_channels=[dim] * n_layers,
            in_index=list(range(n_layers)), input_transform='resize_concat',
            channels=dim * n_layers, dropout_ratio=0.0, num_classes=num_classes,
            norm_cfg=dict(type='SyncBN', requires_grad=True), align_corners=False,
            loss_decode=dict(type='mmseg.CrossEntropyLoss', use_sigmoid=False,
                             loss_weight=1.0)),
        train_cfg=dict(),
        test_cfg=test_cfg)
    return MODELS.build(ConfigDict(cfg))


def _load(model: nn.Module, entry: str, head_path: str,
          backbone_path: Optional[str]) -> None:
    from dino_mm.models.segmentation import build_segmentor_state_dict
    state = build_segmentor_state_dict(head_path, backbone_path)
    result = model.load_state_dict(state, strict=False)
    head_missing = [k for k in result.missing_keys if not k.startswith('backbone.')]
    backbone_missing = [k for k in result.missing_keys if k.startswith('backbone.')]
    problems = []
    if result.unexpected_keys:
        problems.append(f'unexpected keys {result.unexpected_keys[:8]}')
    if head_missing:
        problems.append(f'head keys missing from {head_path!r}: {head_missing[:8]}')
    if backbone_missing and backbone_path is not None:
        problems.append(f'backbone keys missing from {backbone_path!r}: '
                        f'{backbone_missing[:8]}')
    if problems:
        raise RuntimeError(f'{entry}: ' + '; '.join(problems))


def _make_linear_entry(size: str, dataset: str, head: str):
    arch, dim, depth = _V2[size]
    name = f'dinov2_vit{size}14_{dataset}_{head}'

    def entry(pretrained: Optional[bool] = None, weights: Optional[str] = None,
              backbone_weights: Optional[str] = None, **kwargs) -> nn.Module:
        paths = _resolve(name, pretrained, weights, f'{name}_head.pth', backbone_weights,
                         arch, tag=dataset.upper())
        head_path, backbone_path = paths['head'], paths['backbone']
        model = _linear_model(arch, dim, depth, _NUM_CLASSES[dataset], head, kwargs)
        if head_path is not None:
            _load(model, name, head_path, backbone_path)
        elif backbone_path is not None:
            _load_backbone(model.backbone, backbone_path)
        return model.eval()

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"""DINOv2 ViT-{size.upper()}/14 frozen + {head} head on {dataset} (mmseg model).

        Args:
            pretrained (bool, optional): Load the official head and backbone from local
                files (``{name}_head.pth``, ``{arch}_pretrain.pth``). None (default): load
                them if both are here, else warn loudly and return random weights. True:
                a missing file raises. False: random weights.
            weights (str, optional): Local head (or full segmentor) checkpoint; always
                loaded.
            backbone_weights (str, optional): Local official backbone checkpoint or tag;
                always loaded.
            **kwargs: Forwarded to ``DinoVisionTransformer`` (e.g. ``depth``).

        Returns:
            DinoEncoderDecoder: the segmentor in eval mode.
        """)
    return name, entry


for _size in _V2:
    for _dataset in _NUM_CLASSES:
        for _head in ('linear', 'ms'):
            _name, _fn = _make_linear_entry(_size, _dataset, _head)
            globals()[_name] = _fn
            __all__.append(_name)


def _m2f_model(arch: str, dim: int, indices, feat: int, num_heads: int,
               test_cfg: dict, backbone_kwargs: Dict, adapter_kwargs: Dict,
               num_classes: int = 150, adapter: str = 'dino_mm.DinoViTAdapter',
               num_queries: int = 100, attn_heads: Optional[int] = None,
               encoder_ffn: Optional[int] = None, decoder_ffn: Optional[int] = None
               ) -> nn.Module:
    import mmdet.models  # noqa: F401 (mmseg's Mask2FormerHead needs mmdet registered)

    from dino_mm.models.segmentation import DinoEncoderDecoder  # noqa: F401
    from dino_mm.registry import MODELS
    dim = backbone_kwargs.get('embed_dim', dim)
    heads = attn_heads or max(1, min(8, feat // 32))
    encoder_ffn = encoder_ffn or feat * 4
    decoder_ffn = decoder_ffn or feat * 8
    cfg = dict(
        type='dino_mm.DinoEncoderDecoder',
        data_preprocessor=dict(
            type='mmseg.SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255),
        pad_to_patch=False,
        backbone=dict(
            type=adapter,
            backbone=dict(type='dino_mm.DinoVisionTransformer', arch=arch, **backbone_kwargs),
            interaction_indexes=indices, deform_num_heads=num_heads, **adapter_kwargs),
        decode_head=dict(
            type='mmseg.Mask2FormerHead', in_channels=[dim] * 4, strides=[4, 8, 16, 32],
            feat_channels=feat, out_channels=feat, num_classes=num_classes,
            num_queries=num_queries, num_transformer_feat_level=3, align_corners=False,
            pixel_decoder=dict(
                type='mmdet.MSDeformAttnPixelDecoder', num_outs=3,
                norm_cfg=dict(type='GN', num_groups=min(32, feat // 4)),
                act_cfg=dict(type='ReLU'),
                encoder=dict(num_layers=6, layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=feat, num_heads=heads, num_levels=3,
                                       num_points=4, dropout=0.0, batch_first=True),
                    ffn_cfg=dict(embed_dims=feat, feedforward_channels=encoder_ffn,
                                 num_fcs=2, ffn_drop=0.0,
                                 act_cfg=dict(type='ReLU', inplace=True)))),
                positional_encoding=dict(num_feats=feat // 2, normalize=True)),
            enforce_decoder_input_project=False,
            positional_encoding=dict(num_feats=feat // 2, normalize=True),
            transformer_decoder=dict(
                return_intermediate=True, num_layers=9,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=feat, num_heads=heads, attn_drop=0.0,
                                       proj_drop=0.0, batch_first=True),
                    cross_attn_cfg=dict(embed_dims=feat, num_heads=heads, attn_drop=0.0,
                                        proj_drop=0.0, batch_first=True),
                    ffn_cfg=dict(embed_dims=feat, feedforward_channels=decoder_ffn,
                                 num_fcs=2, ffn_drop=0.0, add_identity=True,
                                 act_cfg=dict(type='ReLU', inplace=True))),
                init_cfg=None),
            loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False,
                          loss_weight=2.0, reduction='mean',
                          class_weight=[1.0] * num_classes + [0.1]),
            loss_mask=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True,
                           reduction='mean', loss_weight=5.0),
            loss_dice=dict(type='mmdet.DiceLoss', use_sigmoid=True, activate=True,
                           reduction='mean', naive_dice=True, eps=1.0, loss_weight=5.0),
            train_cfg=dict(
                num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
                assigner=dict(type='mmdet.HungarianAssigner', match_costs=[
                    dict(type='mmdet.ClassificationCost', weight=2.0),
                    dict(type='mmdet.CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                    dict(type='mmdet.DiceCost', weight=5.0, pred_act=True, eps=1.0)]),
                sampler=dict(type='mmdet.MaskPseudoSampler'))),
        train_cfg=dict(),
        test_cfg=test_cfg)
    return MODELS.build(ConfigDict(cfg))


def _load_full(model: nn.Module, entry: str, path: str,
               state: Optional[Dict] = None) -> None:
    """Load a whole segmentor file: dino_mm's layout, the official DINOv3 one
    (``segmentation_model.0`` adapter, ``.1`` Mask2Former head; converted, may leave out
    the ViT, loaded from the backbone file afterwards) or the official DINOv2 ViT-g one
    (mmseg 0.x ``backbone`` ViT-Adapter + ``decode_head``; converted, loaded strictly)."""
    from dino_mm.models.segmentation import load_state_dict_file
    from dino_mm.models.segmentation.official_m2f import (convert_dinov2_m2f,
                                                          convert_official_m2f,
                                                          is_dinov2_m2f, is_official_m2f)
    state = load_state_dict_file(path) if state is None else state
    official = is_official_m2f(state)
    layout = 'official DINOv3' if official else 'dino_mm'
    if official:
        state = convert_official_m2f(state)
    elif is_dinov2_m2f(state):
        state, layout = convert_dinov2_m2f(state), 'official DINOv2'
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if not (official and k.startswith('backbone.backbone.'))]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f'{entry}: {path!r} does not fit this segmentor (missing {missing[:6]}, '
            f'unexpected {result.unexpected_keys[:6]}; {layout} layout). Check the hub '
            'arguments (backbone size, feat_channels, adapter_kwargs) against the file, or '
            'train with configs/segmentation.')


def _pos_grid(state: Dict) -> Optional[int]:
    """The square position-embedding grid stored in a segmentor file, if any."""
    for key in ('backbone.pos_embed', 'backbone.backbone.pos_embed'):
        if key in state:
            n = state[key].shape[1] - 1
            side = int(round(n ** 0.5))
            return side if side * side == n else None
    return None


def dinov2_vitg14_ade20k_m2f(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                             backbone_kwargs: Optional[Dict] = None,
                             adapter_kwargs: Optional[Dict] = None,
                             feat_channels: int = 1024, num_queries: int = 200,
                             **kwargs) -> nn.Module:
    """DINOv2 ViT-g/14 (frozen) + the original ViT-Adapter (injectors) + Mask2Former, ADE20K.

    The official segmentor of ``dinov2/eval/segmentation_m2f``: :class:`dino_mm.models.
    segmentation.ViTAdapter` over the ViT's blocks in four ranges (``[[0, 9], [10, 19],
    [20, 29], [30, 39]]``), 24 deformable heads, and a 1024-wide Mask2Former with 32
    attention heads, FFN 4096 and 200 queries -- the ViT-Adapter repository's 40-block /
    1536-wide recipe; the hosted ``dinov2_vitg14_ade20k_m2f_config.py`` was not readable
    here, so a file with other sizes is refused with the keys that do not fit.

    Args:
        pretrained (bool, optional): Load ``dinov2_vitg14_ade20k_m2f.pth`` (the whole
            segmentor: the official mmseg 0.x file, converted by :func:`dino_mm.models.
            segmentation.official_m2f.convert_dinov2_m2f`, or a dino_mm checkpoint) from
            the local weights folders. None (default): load it if it is here, else warn
            loudly and return random weights. True: a missing file raises. False: random
            weights.
        weights (str, optional): Local segmentor checkpoint path; always loaded.
        backbone_kwargs (dict, optional): Overrides for ``DinoVisionTransformer``.
        adapter_kwargs (dict, optional): Overrides for ``ViTAdapter``.
        feat_channels (int): Mask2Former width. Defaults to 1024.
        num_queries (int): Mask2Former queries. Defaults to 200.
        **kwargs: Also forwarded to the ViT (convenience, e.g. ``depth=4``).

    Returns:
        DinoEncoderDecoder: the segmentor in eval mode (whole-image inference).
    """
    from dino_mm.models.segmentation import load_state_dict_file
    bk = dict(backbone_kwargs or {}, **kwargs)
    depth = bk.get('depth', 40)
    quarter = max(1, depth // 4)
    ranges = [[quarter * i, quarter * (i + 1) - 1] for i in range(min(4, depth))]
    ak = dict(adapter_kwargs or {})
    heads = ak.pop('deform_num_heads', 24)
    ranges = ak.pop('interaction_indexes', ranges)
    path = _resolve('dinov2_vitg14_ade20k_m2f', pretrained, weights,
                    'dinov2_vitg14_ade20k_m2f.pth', what='segmentor')['segmentor']
    state = load_state_dict_file(path) if path is not None else None
    grid = _pos_grid(state) if state is not None else None
    if grid is not None:
        bk.setdefault('img_size', grid * 14)  # the file's position-embedding grid
    attn_heads = max(1, min(32, feat_channels // 32))
    model = _m2f_model('dinov2_vitg14', 1536, ranges, feat_channels,
                       heads, dict(mode='whole'), bk, ak, adapter='dino_mm.ViTAdapter',
                       num_queries=num_queries, attn_heads=attn_heads,
                       encoder_ffn=4 * feat_channels, decoder_ffn=4 * feat_channels)
    if path is not None:
        _load_full(model, 'dinov2_vitg14_ade20k_m2f', path, state)
    return model.eval()


def dinov3_vit7b16_ms(pretrained: Optional[bool] = None, weights: Optional[str] = None,
                      backbone_weights: Optional[str] = None,
                      backbone_kwargs: Optional[Dict] = None,
                      adapter_kwargs: Optional[Dict] = None,
                      feat_channels: int = 2048, **kwargs) -> nn.Module:
    """DINOv3 ViT-7B/16 (frozen) + adapter + Mask2Former on ADE20K (official hub name).

    Evaluation as docs/reference.md §5.6: 896 px sliding window (stride 596) with test-time ratios
    [0.9, 0.95, 1.0, 1.05, 1.1].

    Args:
        pretrained (bool, optional): Load the local files
            ``dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth`` (the official layout,
            converted by :func:`dino_mm.models.segmentation.official_m2f.convert_official_m2f`,
            or a dino_mm-layout checkpoint) and
            ``dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth``. None (default): load them if
            both are here, else warn loudly and return random weights. True: a missing
            file raises. False: random weights.
        weights (str, optional): Local segmentor checkpoint path; always loaded.
        backbone_weights (str, optional): Local official backbone checkpoint path or tag;
            always loaded.
        backbone_kwargs (dict, optional): Overrides for ``DinoVisionTransformer``.
        adapter_kwargs (dict, optional): Overrides for ``DinoViTAdapter``.
        feat_channels (int): Mask2Former hidden width. Defaults to 2048
            (docs/reference.md §5.6).
        **kwargs: Also forwarded to the ViT.

    Returns:
        DinoEncoderDecoder: the segmentor in eval mode.
    """
    bk = dict(backbone_kwargs or {}, **kwargs)
    depth = bk.get('depth', 40)
    indices = [depth // 4 * (i + 1) - 1 for i in range(4)]
    ak = dict(adapter_kwargs or {})
    heads = ak.pop('deform_num_heads', V3_M2F_SIZES['deform_num_heads'])
    test_cfg = dict(mode='slide', crop_size=(896, 896), stride=(596, 596),
                    img_ratios=[0.9, 0.95, 1.0, 1.05, 1.1])
    paths = _resolve('dinov3_vit7b16_ms', pretrained, weights, _V3_7B_M2F_HEAD,
                     backbone_weights, 'dinov3_vit7b16', what='segmentor')
    path, backbone_path = paths['segmentor'], paths['backbone']
    model = _m2f_model('dinov3_vit7b16', 4096, indices, feat_channels, heads, test_cfg,
                       bk, ak, num_queries=V3_M2F_SIZES['num_queries'],
                       attn_heads=V3_M2F_SIZES['attn_heads'],
                       encoder_ffn=V3_M2F_SIZES['ffn'], decoder_ffn=V3_M2F_SIZES['ffn'])
    if path is not None:
        _load_full(model, 'dinov3_vit7b16_ms', path)
    if backbone_path is not None:
        _load_backbone(model.backbone.backbone, backbone_path)
    return model.eval()


__all__ += ['dinov2_vitg14_ade20k_m2f', 'dinov3_vit7b16_ms']
