from .attention import Attention, LinearKMaskedBias, xformers_available
from .block import Block
from .drop_path import batch_subset_residual
from .fp8_linear import FP8Linear, FP8LinearKMaskedBias, convert_linears_to_fp8
from .ffn import (SwiGLUFFN, SwiGLUFFNFused, build_ffn, swiglu_hidden_dim_v2,
                  swiglu_hidden_dim_v3)
from .layer_scale import LayerScale
from .norm import RMSNorm, build_norm_layer
from .patch_embed import PatchEmbed
from .rope import RopePositionEmbedding, rope_apply, rope_rotate_half

__all__ = [
    'FP8Linear', 'FP8LinearKMaskedBias', 'convert_linears_to_fp8',
    'Attention', 'LinearKMaskedBias', 'xformers_available', 'Block',
    'batch_subset_residual', 'SwiGLUFFN', 'SwiGLUFFNFused', 'build_ffn',
    'swiglu_hidden_dim_v2', 'swiglu_hidden_dim_v3', 'LayerScale', 'RMSNorm',
    'build_norm_layer', 'PatchEmbed', 'RopePositionEmbedding', 'rope_apply', 'rope_rotate_half'
]
