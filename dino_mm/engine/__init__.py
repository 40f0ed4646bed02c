# Owned by the area that fills it; keep imports sorted.
from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks_all
from .optimizers import *  # noqa: F401,F403
from .optimizers import __all__ as _optimizers_all
from .schedulers import (SCALING_RULES, CosineSchedule, DINOCosineParamScheduler,
                         scale_lr)

__all__ = _hooks_all + _optimizers_all + [
    'CosineSchedule', 'DINOCosineParamScheduler', 'SCALING_RULES', 'scale_lr'
]
