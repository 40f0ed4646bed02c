"""Semantic segmentation glue (imports mmseg; registered lazily, see dino_mm.registry)."""
from .center_padding import CenterPadding, center_pad, center_pad_amounts
from .checkpoint import (build_segmentor_state_dict, convert_seg_head_state_dict,
                         load_state_dict_file)
from .linear_head import DinoLinearHead
from .official_m2f import convert_dinov2_m2f, convert_dinov2_m2f_head, convert_official_m2f
from .segmentor import DinoEncoderDecoder
from .vit_adapter import DinoViTAdapter, ViTAdapter

__all__ = [
    'build_segmentor_state_dict', 'convert_seg_head_state_dict', 'load_state_dict_file',
    'convert_official_m2f', 'convert_dinov2_m2f', 'convert_dinov2_m2f_head',
    'CenterPadding', 'center_pad', 'center_pad_amounts', 'DinoLinearHead',
    'DinoEncoderDecoder', 'DinoViTAdapter', 'ViTAdapter'
]
