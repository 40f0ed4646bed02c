"""Semantic segmentation glue (imports mmseg; registered lazily, see dino_mm.registry)."""
from .center_padding import CenterPadding, center_pad, center_pad_amounts
from .linear_head import DinoLinearHead
from .segmentor import DinoEncoderDecoder
from .vit_adapter import DinoViTAdapter

__all__ = [
    'CenterPadding', 'center_pad', 'center_pad_amounts', 'DinoLinearHead',
    'DinoEncoderDecoder', 'DinoViTAdapter'
]
