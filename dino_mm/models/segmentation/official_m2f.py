"""Key map from the official DINOv3 Mask2Former segmentor to dino_mm's (adapter + mmdet head).

The official segmentor (``dinov3/eval/segmentation/models``: ``FeatureDecoder``) is a
``segmentation_model`` ModuleList: ``[0]`` the ViT-Adapter wrapping the ViT, ``[1]`` a
detectron2-style ``Mask2FormerHead`` with ``pixel_decoder`` (``MSDeformAttnPixelDecoder``)
and ``predictor`` (``MultiScaleMaskedTransformerDecoder``). dino_mm's segmentor is a
``DinoEncoderDecoder`` whose ``backbone`` is :class:`~dino_mm.models.segmentation.
DinoViTAdapter` (the official adapter layout, ViT at ``backbone.backbone``) and whose
``decode_head`` is mmdet's ``Mask2FormerHead`` (a port of the same detectron2 head). Only
names differ; every tensor keeps its shape, except that the official encoder's level
encoding is a bare parameter where mmdet has an embedding (same ``(levels, dim)`` tensor).

Written by hand: the two layouts come from different code bases and no package maps them.

:func:`convert_dinov2_m2f_head` does the same for the ``decode_head`` of the released DINOv2
ViT-g Mask2Former segmentor (``dinov2_vitg14_ade20k_m2f.pth``, an mmseg-0.x checkpoint of
``dinov2/eval/segmentation_m2f``). That head is mmdet-2.x's Mask2Former built from mmcv-1.x
``BaseTransformerLayer`` modules (``attentions.N``, ``ffns.0``, ``norms.N`` in the order of
each layer's ``operation_order``); dino_mm's is mmdet-3.x's port of the same head, whose
layers name their parts (``self_attn``, ``cross_attn``, ``ffn``). Pixel-decoder convs, the
embeddings and the mask MLP already share names; every tensor keeps its shape.
:func:`convert_dinov2_m2f` converts that whole file: its ``backbone`` is the original
ViT-Adapter subclassing a TIMM-style ViT (the ViT's keys at the adapter's top level, layer
scale ``gamma1`` / ``gamma2``, unfused SwiGLU ``w1`` / ``w2`` / ``w3``), which dino_mm holds as
:class:`~dino_mm.models.segmentation.ViTAdapter` with the ViT at ``backbone.backbone``.
"""
import re
from typing import Dict, Iterable, List, Tuple

import torch

__all__ = [
    'OFFICIAL_M2F_PREFIX', 'convert_official_m2f', 'is_official_m2f',
    'convert_dinov2_m2f', 'convert_dinov2_m2f_backbone', 'convert_dinov2_m2f_head',
    'is_dinov2_m2f'
]

OFFICIAL_M2F_PREFIX = 'segmentation_model.'

# (official pattern, dino_mm replacement), tried in order; the first match wins.
_RULES: List[Tuple[str, str]] = [
    # the adapter (official layout in dino_mm too) and the ViT inside it
    (r'^segmentation_model\.0\.', 'backbone.'),
    # pixel decoder
    (r'^segmentation_model\.1\.pixel_decoder\.input_convs\.(\d+)\.0\.',
     r'decode_head.pixel_decoder.input_convs.\1.conv.'),
    (r'^segmentation_model\.1\.pixel_decoder\.input_convs\.(\d+)\.1\.',
     r'decode_head.pixel_decoder.input_convs.\1.gn.'),
    (r'^segmentation_model\.1\.pixel_decoder\.encoder\.level_encoding$',
     'decode_head.pixel_decoder.level_encoding.weight'),
    (r'^segmentation_model\.1\.pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.self_attn\.',
     r'decode_head.pixel_decoder.encoder.layers.\1.self_attn.'),
    (r'^segmentation_model\.1\.pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.linear1\.',
     r'decode_head.pixel_decoder.encoder.layers.\1.ffn.layers.0.0.'),
    (r'^segmentation_model\.1\.pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.linear2\.',
     r'decode_head.pixel_decoder.encoder.layers.\1.ffn.layers.1.'),
    (r'^segmentation_model\.1\.pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.norm1\.',
     r'decode_head.pixel_decoder.encoder.layers.\1.norms.0.'),
    (r'^segmentation_model\.1\.pixel_decoder\.encoder\.encoder\.layers\.(\d+)\.norm2\.',
     r'decode_head.pixel_decoder.encoder.layers.\1.norms.1.'),
    (r'^segmentation_model\.1\.pixel_decoder\.(lateral|output)_convs\.(\d+)\.norm\.',
     r'decode_head.pixel_decoder.\1_convs.\2.gn.'),
    (r'^segmentation_model\.1\.pixel_decoder\.(lateral|output)_convs\.(\d+)\.(weight|bias)$',
     r'decode_head.pixel_decoder.\1_convs.\2.conv.\3'),
    (r'^segmentation_model\.1\.pixel_decoder\.mask_feature\.',
     'decode_head.pixel_decoder.mask_feature.'),
    # transformer decoder (mmdet layer order: cross-attention, self-attention, FFN)
    (r'^segmentation_model\.1\.predictor\.(query_feat|query_embed|level_embed)\.',
     r'decode_head.\1.'),
    (r'^segmentation_model\.1\.predictor\.input_proj\.(\d+)\.',
     r'decode_head.decoder_input_projs.\1.'),
    (r'^segmentation_model\.1\.predictor\.transformer_self_attention_layers\.(\d+)\.'
     r'self_attn\.', r'decode_head.transformer_decoder.layers.\1.self_attn.attn.'),
    (r'^segmentation_model\.1\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.',
     r'decode_head.transformer_decoder.layers.\1.norms.1.'),
    (r'^segmentation_model\.1\.predictor\.transformer_cross_attention_layers\.(\d+)\.'
     r'multihead_attn\.', r'decode_head.transformer_decoder.layers.\1.cross_attn.attn.'),
    (r'^segmentation_model\.1\.predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.',
     r'decode_head.transformer_decoder.layers.\1.norms.0.'),
    (r'^segmentation_model\.1\.predictor\.transformer_ffn_layers\.(\d+)\.linear1\.',
     r'decode_head.transformer_decoder.layers.\1.ffn.layers.0.0.'),
    (r'^segmentation_model\.1\.predictor\.transformer_ffn_layers\.(\d+)\.linear2\.',
     r'decode_head.transformer_decoder.layers.\1.ffn.layers.1.'),
    (r'^segmentation_model\.1\.predictor\.transformer_ffn_layers\.(\d+)\.norm\.',
     r'decode_head.transformer_decoder.layers.\1.norms.2.'),
    (r'^segmentation_model\.1\.predictor\.post_norm\.',
     'decode_head.transformer_decoder.post_norm.'),
    (r'^segmentation_model\.1\.predictor\.class_embed\.', 'decode_head.cls_embed.'),
]
_MASK_EMBED = re.compile(r'^segmentation_model\.1\.predictor\.mask_embed\.layers\.(\d+)\.(.*)$')
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def is_official_m2f(keys: Iterable[str]) -> bool:
    """Whether a state dict is in the official segmentor layout."""
    return any(k.startswith(OFFICIAL_M2F_PREFIX) for k in keys)


def convert_official_m2f(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official DINOv3 Mask2Former segmentor state dict to dino_mm's layout.

    Raises:
        KeyError: A key that belongs to neither part the map knows (named), so nothing is
            dropped silently.
    """
    out, unknown = {}, []
    for key, value in state.items():
        match = _MASK_EMBED.match(key)
        if match:  # MLP layers 0, 1, 2 sit between ReLUs in mmdet's Sequential
            out[f'decode_head.mask_embed.{2 * int(match.group(1))}.{match.group(2)}'] = value
            continue
        for pattern, repl in _COMPILED:
            if pattern.search(key):
                out[pattern.sub(repl, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f'official Mask2Former checkpoint: {len(unknown)} keys have no dino_mm '
                       f'counterpart, e.g. {unknown[:5]}; is this a DINOv3 ADE20K Mask2Former '
                       'file (segmentation_model.0 adapter, segmentation_model.1 head)?')
    return out


# DINOv2 (mmseg 0.x, mmcv-1.x layers) -> dino_mm (mmseg 1.x / mmdet 3.x) head, keys relative
# to the head. Each pattern must match the whole key; the first match wins.
#   Encoder layer, operation_order ('self_attn', 'norm', 'ffn', 'norm'): attentions.0 is
#     the deformable self-attention, norms.0 follows it, norms.1 follows the FFN -- as
#     mmdet 3's DeformableDetrTransformerEncoderLayer (self_attn, norms[0], ffn, norms[1]).
#   Decoder layer, operation_order ('cross_attn', 'norm', 'self_attn', 'norm', 'ffn',
#     'norm'): attentions are numbered in that order (0 = cross, 1 = self) and so are the
#     norms -- mmdet 3's Mask2FormerTransformerDecoderLayer applies cross_attn, norms[0],
#     self_attn, norms[1], ffn, norms[2], so the norm indices carry over unchanged.
#   mmcv's FFN is Sequential(Sequential(Linear, act, Dropout), Linear, Dropout) in both.
_W = r'(weight|bias)'
_MHA = r'(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)'
_MSDA = r'(sampling_offsets|attention_weights|value_proj|output_proj)'
_ENC = r'pixel_decoder\.encoder\.layers\.(\d+)\.'
_DEC = r'transformer_decoder\.layers\.(\d+)\.'
_DINOV2_RULES: List[Tuple[str, str]] = [
    # pixel decoder: ConvModule (conv + gn) on both sides, same numbering
    (rf'pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.(conv|gn)\.{_W}',
     r'pixel_decoder.\1.\2.\3.\4'),
    (rf'{_ENC}attentions\.0\.{_MSDA}\.{_W}', r'pixel_decoder.encoder.layers.\1.self_attn.\2.\3'),
    (rf'{_ENC}ffns\.0\.layers\.(0\.0|1)\.{_W}',
     r'pixel_decoder.encoder.layers.\1.ffn.layers.\2.\3'),
    (rf'{_ENC}norms\.([01])\.{_W}', r'pixel_decoder.encoder.layers.\1.norms.\2.\3'),
    (r'pixel_decoder\.level_encoding\.weight', 'pixel_decoder.level_encoding.weight'),
    (rf'pixel_decoder\.mask_feature\.{_W}', r'pixel_decoder.mask_feature.\1'),
    # transformer decoder
    (rf'{_DEC}attentions\.0\.attn\.{_MHA}', r'transformer_decoder.layers.\1.cross_attn.attn.\2'),
    (rf'{_DEC}attentions\.1\.attn\.{_MHA}', r'transformer_decoder.layers.\1.self_attn.attn.\2'),
    (rf'{_DEC}ffns\.0\.layers\.(0\.0|1)\.{_W}',
     r'transformer_decoder.layers.\1.ffn.layers.\2.\3'),
    (rf'{_DEC}norms\.([012])\.{_W}', r'transformer_decoder.layers.\1.norms.\2.\3'),
    (rf'transformer_decoder\.post_norm\.{_W}', r'transformer_decoder.post_norm.\1'),
    # only present where the decoder width differs from feat_channels (not in the release)
    (rf'decoder_input_projs\.(\d+)\.{_W}', r'decoder_input_projs.\1.\2'),
    (r'(query_embed|query_feat|level_embed)\.weight', r'\1.weight'),
    (rf'cls_embed\.{_W}', r'cls_embed.\1'),
    (rf'mask_embed\.([024])\.{_W}', r'mask_embed.\1.\2'),  # Linear, ReLU, Linear, ReLU, Linear
]
_DINOV2_COMPILED = [(re.compile(p), r) for p, r in _DINOV2_RULES]
_DINOV2_MARK = re.compile(r'transformer_decoder\.layers\.\d+\.attentions\.\d+\.attn\.')


def is_dinov2_m2f(keys: Iterable[str], prefix: str = 'decode_head.') -> bool:
    """Whether a state dict holds the DINOv2 (mmseg-0.x) Mask2Former head under ``prefix``:
    its decoder layers keep mmcv-1.x ``attentions.N`` names, which dino_mm's never have."""
    return any(k.startswith(prefix) and _DINOV2_MARK.match(k[len(prefix):]) for k in keys)


def convert_dinov2_m2f_head(state: Dict[str, torch.Tensor],
                            prefix: str = 'decode_head.') -> Dict[str, torch.Tensor]:
    """Rename the DINOv2 Mask2Former ``decode_head`` of an mmseg-0.x segmentor state dict.

    Args:
        state (dict): The official state dict (all its keys; e.g. the ``state_dict`` entry
            of ``dinov2_vitg14_ade20k_m2f.pth``). Only keys starting with ``prefix`` are
            converted; the others (the backbone) are left out of the result.
        prefix (str): Where the head sits in ``state``. Defaults to ``'decode_head.'``.

    Returns:
        dict: The head's tensors under dino_mm's names (``mmseg.Mask2FormerHead``), with the
        same ``prefix``; tensors are the input's, unchanged in shape and value.

    Raises:
        KeyError: Keys under ``prefix`` that have no dino_mm counterpart (named), so nothing
            is dropped silently; or no key under ``prefix`` at all.
    """
    out, unknown, seen = {}, [], 0
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        seen += 1
        rel = key[len(prefix):]
        for pattern, repl in _DINOV2_COMPILED:
            match = pattern.fullmatch(rel)
            if match:
                out[prefix + match.expand(repl)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f'DINOv2 Mask2Former checkpoint: {len(unknown)} keys under {prefix!r} '
                       f'have no dino_mm counterpart, e.g. {unknown[:5]}; is this the mmseg-0.x '
                       'dinov2_vitg14_ade20k_m2f head (mmcv-1.x attentions/ffns/norms layers)?')
    if not seen:
        raise KeyError(f'DINOv2 Mask2Former checkpoint: no key starts with {prefix!r} '
                       f'(first keys: {list(state)[:5]}); pass the state dict itself (its '
                       "'state_dict' entry) or the prefix the head sits under")
    return out


# --------------------------------------------------------------- DINOv2 ViT-g segmentor
#: Prefix of the adapter and ViT in the official DINOv2 Mask2Former file (mmseg 0.x).
DINOV2_M2F_BACKBONE_PREFIX = 'backbone.'

_V2_VIT_KEYS = re.compile(r'^(cls_token|pos_embed|patch_embed\.|blocks\.)')
_V2_ADAPTER_KEYS = re.compile(r'^(level_embed$|spm\.|interactions\.|up\.|norm[1-4]\.)')


def convert_dinov2_m2f_backbone(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The official ``ViTAdapter`` keys (``backbone.*``, the ViT's own keys at the top level
    of the adapter) to :class:`~dino_mm.models.segmentation.ViTAdapter`'s (the ViT at
    ``backbone.backbone``); returns the converted keys and raises naming any it cannot
    place.

    Per block: ``gamma1`` / ``gamma2`` -> ``ls1.gamma`` / ``ls2.gamma``; the official
    unfused SwiGLU ``mlp.w1`` / ``mlp.w2`` -> the fused ``mlp.w12`` (gate rows first, as
    ``SwiGLUFFNFused`` splits them); a block saved without layer scale gets unit gammas
    (the same function).
    """
    p = DINOV2_M2F_BACKBONE_PREFIX
    out: Dict[str, torch.Tensor] = {}
    unplaced = []
    swiglu: Dict[str, Dict[str, torch.Tensor]] = {}
    blocks_seen, gammas_seen = set(), set()
    for key, value in state.items():
        if not key.startswith(p):
            continue
        name = key[len(p):]
        if _V2_ADAPTER_KEYS.match(name):
            out[key] = value
            continue
        if not _V2_VIT_KEYS.match(name):
            unplaced.append(key)
            continue
        m = re.match(r'^blocks\.(\d+)\.(.*)$', name)
        if m is None:
            out[f'{p}backbone.{name}'] = value
            continue
        idx, rest = m.groups()
        blocks_seen.add(idx)
        block = f'{p}backbone.blocks.{idx}.'
        g = re.match(r'^gamma([12])$', rest)
        if g:
            gammas_seen.add(idx)
            out[f'{block}ls{g.group(1)}.gamma'] = value
        elif re.match(r'^mlp\.w[12]\.(weight|bias)$', rest):
            swiglu.setdefault(f'{block}mlp.w12.{rest.rsplit(".", 1)[1]}', {})[rest[4:6]] = value
        elif re.match(r'^(norm[12]|attn\.(qkv|proj)|mlp\.(fc1|fc2|w3))\.(weight|bias)$', rest):
            out[block + rest] = value
        else:
            unplaced.append(key)
    for fused, parts in swiglu.items():
        if set(parts) != {'w1', 'w2'}:
            raise KeyError(f'{fused}: the official file has only {sorted(parts)} of mlp.w1 / '
                           'mlp.w2 for this block; both are needed to fuse them.')
        out[fused] = torch.cat([parts['w1'], parts['w2']], dim=0)
    for idx in blocks_seen - gammas_seen:
        dim = out[f'{p}backbone.blocks.{idx}.norm1.weight'].shape[0]
        for i in (1, 2):
            out[f'{p}backbone.blocks.{idx}.ls{i}.gamma'] = torch.ones(dim)
    if unplaced:
        raise KeyError(
            f'{len(unplaced)} backbone key(s) of the official DINOv2 Mask2Former file have no '
            f'place in dino_mm.ViTAdapter: {unplaced[:8]}. Is the file a DINOv2 ViT-Adapter '
            'segmentor (mmseg 0.x, dinov2/eval/segmentation_m2f)?')
    return out


def convert_dinov2_m2f(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The whole official DINOv2 ViT-g Mask2Former segmentor (mmseg 0.x) -> dino_mm's
    ``DinoEncoderDecoder`` with :class:`~dino_mm.models.segmentation.ViTAdapter` and
    ``mmseg.Mask2FormerHead``: the backbone by :func:`convert_dinov2_m2f_backbone`, the head
    by :func:`convert_dinov2_m2f_head`. Any key outside ``backbone.`` / ``decode_head.`` is
    named in a ``KeyError``."""
    others = [k for k in state if not k.startswith((DINOV2_M2F_BACKBONE_PREFIX, 'decode_head.'))]
    if others:
        raise KeyError(f'DINOv2 Mask2Former checkpoint: keys outside backbone. / decode_head. '
                       f'have no place in the segmentor: {others[:8]}')
    out = convert_dinov2_m2f_backbone(state)
    out.update(convert_dinov2_m2f_head(state))
    return out
