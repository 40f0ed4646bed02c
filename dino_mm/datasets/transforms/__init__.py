# Owned by the area that fills it; keep imports sorted.
from .loading import CorruptImageError, LoadImagePIL, decode_image_pil
from .masking import MaskingGenerator
from .multi_crop import (IMAGENET_MEAN, IMAGENET_STD, DINOMultiCrop, RandomGaussianBlur,
                         make_color_distortion, make_geometric_augmentation, make_normalize)

__all__ = [
    'CorruptImageError', 'LoadImagePIL', 'decode_image_pil', 'MaskingGenerator',
    'DINOMultiCrop', 'RandomGaussianBlur', 'make_color_distortion',
    'make_geometric_augmentation', 'make_normalize', 'IMAGENET_MEAN', 'IMAGENET_STD'
]
