from .dino_head import DINOHead, WeightNormLinear
from .linear import *  # noqa: F401,F403
from .linear import __all__ as _linear_all

__all__ = ['DINOHead', 'WeightNormLinear'] + list(_linear_all)
