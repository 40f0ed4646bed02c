# Importing dino_mm.engine installs the safe/atomic checkpoint I/O (see checkpoint.py).
from . import checkpoint  # noqa: F401
from .checkpoint import (AtomicLocalBackend, CheckpointError, NonFiniteWeightsError,
                         PlainCheckpointHook, SafeCheckpointHook, atomic_torch_save,
                         check_checkpoint_matches_model, safe_torch_load)
from .fsdp import DINOFSDPStrategy, fsdp_update_teacher, shard_dino_model
from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks_all
from .model_wrappers import DINODistributedDataParallel
from .optimizers import *  # noqa: F401,F403
from .optimizers import __all__ as _optimizers_all
from .schedulers import (SCALING_RULES, CosineSchedule, DINOCosineParamScheduler,
                         scale_lr)

__all__ = _hooks_all + _optimizers_all + [
    'DINOFSDPStrategy', 'DINODistributedDataParallel', 'fsdp_update_teacher',
    'shard_dino_model',
    'AtomicLocalBackend', 'CheckpointError', 'NonFiniteWeightsError', 'PlainCheckpointHook',
    'SafeCheckpointHook', 'atomic_torch_save', 'check_checkpoint_matches_model',
    'safe_torch_load',
    'CosineSchedule', 'DINOCosineParamScheduler', 'SCALING_RULES', 'scale_lr'
]
