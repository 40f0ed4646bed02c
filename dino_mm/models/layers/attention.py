"""Multi-head self-attention with a fused ``qkv`` projection and optional RoPE."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .rope import rope_apply

__all__ = ['LinearKMaskedBias', 'Attention', 'xformers_available']

try:  # optional: only used on CUDA tensors, never required
    from xformers.ops import memory_efficient_attention as _xformers_attention
except Exception:  # noqa: BLE001 - any import failure means "not usable"
    _xformers_attention = None


def xformers_available() -> bool:
    return _xformers_attention is not None


class LinearKMaskedBias(nn.Linear):
    """``nn.Linear`` for a fused qkv projection whose key bias is forced to zero.

    DINOv3 multiplies the bias by a persistent buffer ``bias_mask`` (1 on the q and v
    thirds, 0 on the k third). The buffer is part of official checkpoints, so it is kept
    as a buffer rather than folded into the bias. Unlike the official layer it is filled
    with its final values at construction instead of NaN, so a model that was neither
    initialised nor loaded still gives finite outputs.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        if out_features % 3:
            raise ValueError(f'LinearKMaskedBias expects 3 * dim outputs, got {out_features}.')
        if self.bias is not None:
            self.register_buffer('bias_mask', torch.empty_like(self.bias), persistent=True)
            self.reset_bias_mask()

    def reset_bias_mask(self) -> None:
        if self.bias is None:
            return
        dim = self.out_features // 3
        mask = torch.ones_like(self.bias_mask)
        mask[dim:2 * dim] = 0
        self.bias_mask.data = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None:
            bias = bias * self.bias_mask.to(bias.dtype)
        return F.linear(x, self.weight, bias)


class Attention(nn.Module):
    """Self-attention: ``qkv`` Linear(D, 3D) -> SDPA -> ``proj`` Linear(D, D).

    RoPE, when given, rotates q and k of the last ``H*W`` tokens only (class and
    register tokens come first and stay un-rotated), in the dtype of the RoPE tables.

    Args:
        dim (int): Model width.
        num_heads (int): Heads. Defaults to 8.
        qkv_bias (bool): Bias on qkv. Defaults to True.
        proj_bias (bool): Bias on the output projection. Defaults to True.
        attn_drop (float): Attention dropout. Defaults to 0.
        proj_drop (float): Output dropout. Defaults to 0.
        mask_k_bias (bool): Use :class:`LinearKMaskedBias` for qkv (DINOv3). Defaults to
            False.
        use_xformers (bool): Use xFormers memory-efficient attention for CUDA tensors
            when it is installed. Defaults to True.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 mask_k_bias: bool = False, use_xformers: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads}).')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        linear = LinearKMaskedBias if mask_k_bias else nn.Linear
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.use_xformers = use_xformers

    @staticmethod
    def apply_rope(t: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        sin, cos = rope
        dtype = t.dtype
        t = t.to(sin.dtype)
        prefix = t.shape[-2] - sin.shape[-2]
        rotated = rope_apply(t[..., prefix:, :], sin, cos)
        return torch.cat([t[..., :prefix, :], rotated], dim=-2).to(dtype)

    def forward(self, x: torch.Tensor,
                rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # each (B, N, H, d)
        drop = self.attn_drop if self.training else 0.0
        if (self.use_xformers and _xformers_attention is not None and x.is_cuda
                and rope is None and drop == 0.0):
            out = _xformers_attention(q, k, v, scale=self.scale)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if rope is not None:
                q, k = self.apply_rope(q, rope), self.apply_rope(k, rope)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop).transpose(1, 2)
        return self.proj_drop(self.proj(out.reshape(B, N, C)))
