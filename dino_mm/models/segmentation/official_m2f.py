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
"""
import re
from typing import Dict, Iterable, List, Tuple

import torch

__all__ = ['OFFICIAL_M2F_PREFIX', 'convert_official_m2f', 'is_official_m2f']

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
