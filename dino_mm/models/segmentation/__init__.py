"""Semantic segmentation glue (imports mmseg; registered lazily, see dino_mm.registry)."""
from .center_padding import CenterPadding, center_pad, center_pad_amounts
from .checkpoint import (build_segmentor_state_dict, convert_seg_head_state_dict,
                         load_state_dict_file)
from .linear_head import DinoLinearHead
from .segmentor import DinoEncoderDecoder
from .vit_adapter import DinoViTAdapter

__all__ = [
    'build_segmentor_state_dict', 'convert_seg_head_state_dict', 'load_state_dict_file',
    'CenterPadding', 'center_pad', 'center_pad_amounts', 'DinoLinearHead',
    'DinoEncoderDecoder', 'DinoViTAdapter'
]
