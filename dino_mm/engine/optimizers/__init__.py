# Owned by the area that fills it; keep imports sorted.
from .bf16_optim_wrapper import BF16OptimWrapper, cpu_amp_optim_wrapper_cfg
from .fp16_optim_wrapper import FP16OptimWrapper
from .layer_decay_constructor import (LayerDecayOptimWrapperConstructor,
                                      dino_param_multipliers, get_layer_id)

__all__ = ['BF16OptimWrapper', 'FP16OptimWrapper', 'LayerDecayOptimWrapperConstructor', 'cpu_amp_optim_wrapper_cfg',
           'dino_param_multipliers', 'get_layer_id']
