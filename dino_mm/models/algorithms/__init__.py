from .dinov2 import DINOv2
from .dinov3 import DINOv3
from .distillation import DINOv3Distillation, MultiDistillation

__all__ = ['DINOv2', 'DINOv3', 'DINOv3Distillation', 'MultiDistillation']
