from .convnext import DinoConvNeXt
from .utils import (build_backbone_from_file, flatten_block_chunks, load_checkpoint_strict,
                    unwrap_state_dict)
from .vision_transformer import DINO_VIT_ARCHS, DinoVisionTransformer

__all__ = [
    'DinoVisionTransformer', 'DinoConvNeXt', 'DINO_VIT_ARCHS', 'load_checkpoint_strict',
    'unwrap_state_dict', 'flatten_block_chunks'
]
