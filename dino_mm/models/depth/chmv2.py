"""CHMv2 canopy-height model of DINOv3 (official hub entry ``dinov3_vitl16_chmv2``): its
configuration, the official inference path and the HF transformers ``chmv2`` key layout.

Facts taken from the official repository (``dinov3/hub/depthers.py``,
``dinov3/eval/depth/models``, ``notebooks/chmv2_inference.ipynb``):

* backbone: ViT-L/16 with the SAT-493M weights, blocks [5, 11, 17, 23], final norm applied,
  (patch map, class token) pairs;
* head: the DINOv3 DPT head with ``readout_type='project'`` (class token), 256 fusion
  channels, post-process channels [128, 256, 512, 1024], biased residual convs, no 3x3
  projection after the fusion, a 128-wide output block, 256 bins placed and normalised by
  the ``chmv2_mixlog`` strategies (heights 0.001 .. 96 m);
* inference (the notebook): the image tensor (channels first, RGB) is scaled to [0, 1],
  normalised with the CHMv2 mean / std, center-padded to a multiple of 16 by the model, and
  the prediction is resized bilinearly (``align_corners=False``) to the image size. The
  notebook runs whole images; it does not tile them.

HF transformers (``CHMv2ForDepthEstimation``) stores the same tensors under other names:
:func:`chmv2_hf_to_dino_mm` / :func:`chmv2_dino_mm_to_hf` convert a whole model (backbone
through :mod:`dino_mm.models.converters`), :func:`chmv2_hf_head_to_official` the head alone
into the layout of the official head file. Sizes correspond as: HF
``backbone_config.out_indices`` = dino_mm ``out_indices`` + 1 (HF counts the embeddings as
stage 0), ``fusion_hidden_size`` = ``channels``, ``head_hidden_size`` =
``n_hidden_channels``, ``number_output_channels`` = ``n_bins``; ``post_process_channels``,
``min_depth`` / ``max_depth`` and the strategies have the same names.
"""
import re
import warnings
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    'CHMV2_MEAN', 'CHMV2_STD', 'CHMV2_OUT_INDICES', 'CHMV2_DEPTH_RANGE', 'chmv2_head_cfg',
    'chmv2_model_cfg', 'chmv2_normalize', 'predict_canopy_height', 'chmv2_hf_to_dino_mm',
    'chmv2_dino_mm_to_hf', 'chmv2_hf_head_to_official', 'chmv2_official_head_to_hf'
]

#: Normalisation of the notebook (``CHMV2_MEAN`` / ``CHMV2_STD``), for RGB in [0, 1].
CHMV2_MEAN = (0.420, 0.411, 0.296)
CHMV2_STD = (0.213, 0.156, 0.143)
#: Backbone blocks of ``_get_chmv2_config`` (0-based; HF counts from 1: [6, 12, 18, 24]).
CHMV2_OUT_INDICES = (5, 11, 17, 23)
#: ``min_depth`` / ``max_depth`` of ``_get_chmv2_config`` (metres).
CHMV2_DEPTH_RANGE = (0.001, 96.0)

StateDict = Dict[str, Tensor]


# ------------------------------------------------------------------------------ configs
def chmv2_head_cfg(embed_dims: int = 1024,
                   post_process_channels: Sequence[int] = (128, 256, 512, 1024),
                   channels: int = 256, n_hidden_channels: int = 128, n_bins: int = 256,
                   **overrides) -> dict:
    """``dino_mm.DPTDepthHead`` config of the CHMv2 head (official sizes by default).

    Smaller widths give the same structure (as the tests use); ``overrides`` are other
    :class:`~dino_mm.models.depth.DPTDepthHead` arguments (e.g. ``init_cfg``).
    """
    cfg = dict(type='dino_mm.DPTDepthHead', embed_dims=embed_dims,
               post_process_channels=list(post_process_channels), channels=channels,
               readout_type='project', patch_size=16, use_bias=True,
               projection_after_fusion=False, n_hidden_channels=n_hidden_channels,
               output_align_corners=True, classify=True, n_bins=n_bins,
               bins_strategy='chmv2_mixlog', norm_strategy='chmv2_mixlog',
               min_depth=CHMV2_DEPTH_RANGE[0], max_depth=CHMV2_DEPTH_RANGE[1], loss_decode=[])
    cfg.update(overrides)
    return cfg


def chmv2_model_cfg(out_indices: Sequence[int] = CHMV2_OUT_INDICES,
                    head: Optional[dict] = None, **backbone_kwargs) -> dict:
    """``dino_mm.DinoDepthEstimator`` config of CHMv2: ViT-L/16 + :func:`chmv2_head_cfg`.

    Args:
        out_indices (Sequence[int]): Backbone blocks. Defaults to [5, 11, 17, 23].
        head (dict, optional): Head config; defaults to :func:`chmv2_head_cfg` with
            ``embed_dims`` taken from ``backbone_kwargs['embed_dim']`` (1024).
        **backbone_kwargs: ``DinoVisionTransformer`` overrides (``depth``, ``embed_dim``,
            ``num_heads``, ``untie_global_and_local_cls_norm``, ``init_cfg``...).
    """
    backbone = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vitl16',
                    out_indices=list(out_indices), out_type='cls_featmap', norm_out=True)
    backbone.update(backbone_kwargs)
    if head is None:
        head = chmv2_head_cfg(embed_dims=backbone.get('embed_dim', 1024))
    # The notebook's normalisation, on the 0-255 scale of mmseg's data preprocessor.
    preprocessor = dict(type='dino_mm.DepthDataPreProcessor',
                        mean=[255 * m for m in CHMV2_MEAN], std=[255 * s for s in CHMV2_STD])
    return dict(type='dino_mm.DinoDepthEstimator', data_preprocessor=preprocessor,
                backbone=backbone, decode_head=head, test_cfg=dict(mode='whole'))


# ---------------------------------------------------------------------------- inference
def chmv2_normalize(image: Tensor) -> Tensor:
    """The notebook's ``make_transform``: an RGB image tensor, channels first ((3, H, W) or
    (B, 3, H, W)), integer (scaled by its dtype's maximum, e.g. /255 for uint8, as
    ``ToDtype(torch.float32, scale=True)``) or float in [0, 1], normalised with the CHMv2
    mean / std. Returns float32."""
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f'expected an RGB image (3, H, W) or batch (B, 3, H, W), channels '
                         f'first as rasterio reads it; got shape {tuple(image.shape)}.')
    if image.dtype.is_floating_point:
        x = image.to(torch.float32)
    else:
        x = image.to(torch.float32) / float(torch.iinfo(image.dtype).max)
    mean = torch.tensor(CHMV2_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(CHMV2_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict_canopy_height(model: torch.nn.Module, image: Tensor) -> Tensor:
    """Canopy height (metres) of an RGB image, the inference path of the official notebook.

    Normalises with :func:`chmv2_normalize`, runs the estimator on the whole image (it
    center-pads to a multiple of 16 and predicts on the padded image) and resizes the
    prediction bilinearly (``align_corners=False``) to the image size. The estimator also
    clamps to the head's range [0.001, 96] m, which the CHMv2 output (a weighted mean of
    bins within that range) only reaches through rounding.

    Args:
        model (nn.Module): A :class:`~dino_mm.models.depth.DinoDepthEstimator` such as
            ``dino_mm.hub.dinov3_vitl16_chmv2()`` (in eval mode).
        image (Tensor): (3, H, W) or (B, 3, H, W), see :func:`chmv2_normalize`.

    Returns:
        Tensor: (H, W) for one image, (B, H, W) for a batch, float32.
    """
    single = image.dim() == 3
    x = chmv2_normalize(image)
    x = x[None] if single else x
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    # encode_decode resizes the prediction of the padded image to the image size (bilinear,
    # align_corners=False): the notebook's F.interpolate(pred, size=image.shape[-2:]).
    height = model.estimate_depth(x)[:, 0]
    return height[0] if single else height


# ----------------------------------------------------------------------- HF <-> dino_mm
# (HF name under ``head.``, official / dino_mm name under ``decode_head.``); {0}, {1}, ...
# are integers. The official DPT head wraps its convs in ConvModules (``.conv``).
_HEAD_NAMES = (
    ('reassemble_stage.layers.{0}.projection.', 'reassemble_blocks.projects.{0}.conv.'),
    ('reassemble_stage.layers.{0}.resize.', 'reassemble_blocks.resize_layers.{0}.'),
    ('reassemble_stage.readout_projects.{0}.0.', 'reassemble_blocks.readout_projects.{0}.0.'),
    ('convs.{0}.', 'convs.{0}.conv.'),
    ('fusion_layers.{0}.projection.', 'fusion_blocks.{0}.project.conv.'),
    ('fusion_layers.{0}.residual_layer{1}.convolution{2}.',
     'fusion_blocks.{0}.res_conv_unit{1}.conv{2}.conv.'),
    ('conv_depth.head.{0}.', 'conv_depth.head.{0}.'),
)


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r'\{\d\}', template)
    return re.compile('^' + r'(\d+)'.join(re.escape(p) for p in parts) + r'(weight|bias)$')


def _rename(sd: Mapping[str, Tensor], to_official: bool) -> StateDict:
    rules = [(_pattern(a), b) if to_official else (_pattern(b), a) for a, b in _HEAD_NAMES]
    out, unknown = {}, []
    for k, v in sd.items():
        for pattern, target in rules:
            m = pattern.match(k)
            if m:
                *numbers, kind = m.groups()
                out[target.format(*numbers) + kind] = v
                break
        else:
            unknown.append(k)
    if unknown:
        side = 'HF CHMv2 head' if to_official else 'official CHMv2 head'
        raise KeyError(f'{side}: unexpected keys {unknown[:10]} (a head of another model?)')
    return out


def chmv2_hf_head_to_official(sd: Mapping[str, Tensor]) -> StateDict:
    """HF ``CHMv2Head`` tensors (keys relative to ``head.``) -> the official head file
    layout (the keys of ``depther.decoder``, i.e. dino_mm's under ``decode_head.``)."""
    return _rename(sd, to_official=True)


def chmv2_official_head_to_hf(sd: Mapping[str, Tensor]) -> StateDict:
    """Inverse of :func:`chmv2_hf_head_to_official`."""
    return _rename(sd, to_official=False)


def _split(sd: Mapping[str, Tensor], prefixes: Tuple[str, str]) -> Tuple[StateDict, StateDict]:
    backbone, head = {}, {}
    other = []
    for k, v in sd.items():
        if k.startswith(prefixes[0]):
            backbone[k[len(prefixes[0]):]] = v
        elif k.startswith(prefixes[1]):
            head[k[len(prefixes[1]):]] = v
        else:
            other.append(k)
    if other:
        raise KeyError(f'keys outside {prefixes[0]!r} / {prefixes[1]!r}: {other[:10]}')
    return backbone, head


def chmv2_hf_to_dino_mm(sd: Mapping[str, Tensor], head_dim: Optional[int] = None,
                        rope_base: float = 100.0,
                        local_cls_norm: Optional[bool] = None) -> StateDict:
    """A HF ``CHMv2ForDepthEstimation`` state dict -> :func:`chmv2_model_cfg`'s estimator.

    Args:
        sd (Mapping): ``backbone.*`` (``DINOv3ViTBackbone``) and ``head.*`` tensors.
        head_dim (int, optional): Attention head dim of the backbone (hidden size / heads),
            needed for the RoPE periods HF does not store. Defaults to 64 (ViT-L/16).
        rope_base (float): RoPE base (``rope_theta``). Defaults to 100.
        local_cls_norm (bool, optional): Add the training-only ``local_cls_norm`` (as a
            copy of ``norm``) that the SAT-493M ViT-L has and HF files lack; pass True for
            a backbone built with ``untie_global_and_local_cls_norm=True``.

    Returns:
        dict: ``backbone.*`` (official ViT layout) and ``decode_head.*`` keys.
    """
    from dino_mm.models.converters import convert_state_dict
    backbone, head = _split(sd, ('backbone.', 'head.'))
    k_bias = [k for k, v in backbone.items() if k.endswith('k_proj.bias') and v.any()]
    if k_bias:
        # HF adds this bias to the keys before RoPE, so it changes the attention; the
        # official ViT multiplies it by a zero mask. The converted model is the official one.
        warnings.warn(f'HF CHMv2 backbone: non-zero key biases ({k_bias[:3]}...) are applied by '
                      'HF but masked to zero by the official DINOv3 ViT (and so by dino_mm): '
                      'the converted model will not reproduce this HF model.', UserWarning,
                      stacklevel=2)
    official = convert_state_dict(backbone, to='official', src='hf', family='dinov3_vit',
                                  head_dim=head_dim, rope_base=rope_base,
                                  local_cls_norm=local_cls_norm)
    out = {'backbone.' + k: v for k, v in official.items()}
    out.update({'decode_head.' + k: v for k, v in chmv2_hf_head_to_official(head).items()})
    return out


def chmv2_dino_mm_to_hf(sd: Mapping[str, Tensor], key_bias: bool = True) -> StateDict:
    """Inverse of :func:`chmv2_hf_to_dino_mm` (``backbone.*`` / ``decode_head.*`` in).

    Args:
        sd (Mapping): The estimator's state dict.
        key_bias (bool): Emit ``k_proj.bias`` (HF ``CHMv2Config`` builds its backbone with
            ``key_bias=True``). The official ViT multiplies its key bias by a zero mask,
            so the bias written is zero. Defaults to True.
    """
    from dino_mm.models.converters import convert_state_dict
    backbone, head = _split(sd, ('backbone.', 'decode_head.'))
    hf = convert_state_dict(backbone, to='hf', src='official', family='dinov3_vit')
    if key_bias:
        for k in [k for k in hf if k.endswith('attention.q_proj.bias')]:
            hf[k.replace('q_proj.bias', 'k_proj.bias')] = torch.zeros_like(hf[k])
    out = {'backbone.' + k: v for k, v in hf.items()}
    out.update({'head.' + k: v for k, v in chmv2_official_head_to_hf(head).items()})
    return out

