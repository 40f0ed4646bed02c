# Owned by the area that fills it; keep imports sorted.
from .layer_decay_constructor import (LayerDecayOptimWrapperConstructor,
                                      dino_param_multipliers, get_layer_id)

__all__ = ['LayerDecayOptimWrapperConstructor', 'dino_param_multipliers', 'get_layer_id']
