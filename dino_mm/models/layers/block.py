"""Pre-norm transformer block shared by the DINOv2 and DINOv3 ViTs."""
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .attention import Attention
from .drop_path import DropPath, batch_subset_residual
from .ffn import build_ffn
from .layer_scale import LayerScale

__all__ = ['Block']


class Block(nn.Module):
    """``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Stochastic depth follows the official repositories, which differ:

    - ``drop_path_mode='v2'``: in training, a rate above 0.1 uses the batch-subset
      scheme; a rate in (0, 0.1] uses a classic per-sample DropPath (the official code
      uses its first DropPath module for both residuals; same rate, so same law).
    - ``drop_path_mode='v3'``: any positive rate uses the batch-subset scheme.

    Args:
        dim (int): Model width.
        num_heads (int): Attention heads.
        ffn_ratio (float): FFN width / dim. Defaults to 4.
        qkv_bias (bool): Defaults to True.
        proj_bias (bool): Defaults to True.
        ffn_bias (bool): Defaults to True.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        init_values (float, optional): LayerScale init; None or 0 disables LayerScale.
        norm_layer (Callable): ``dim -> nn.Module``. Defaults to LayerNorm(eps=1e-6).
        ffn_layer (str): See :func:`build_ffn`. Defaults to 'mlp'.
        mask_k_bias (bool): DINOv3 key-bias masking. Defaults to False.
        drop_path_mode (str): 'v2' or 'v3'. Defaults to 'v2'.
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, drop_path: float = 0.0,
                 init_values: Optional[float] = None,
                 norm_layer: Callable[[int], nn.Module] = None, ffn_layer: str = 'mlp',
                 mask_k_bias: bool = False, drop_path_mode: str = 'v2') -> None:
        super().__init__()
        if drop_path_mode not in ('v2', 'v3'):
            raise ValueError(f"drop_path_mode must be 'v2' or 'v3', got {drop_path_mode!r}.")
        norm_layer = norm_layer or (lambda d: nn.LayerNorm(d, eps=1e-6))
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias,
                              mask_k_bias=mask_k_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = build_ffn(ffn_layer, dim, int(dim * ffn_ratio), bias=ffn_bias,
                             version=drop_path_mode)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path_rate = drop_path
        self.drop_path_mode = drop_path_mode
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attn_residual(self, x: torch.Tensor, rope) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x), rope=rope))

    def _ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor,
                rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        rate = self.drop_path_rate if self.training else 0.0
        subset = rate > 0 and (self.drop_path_mode == 'v3' or rate > 0.1)
        if subset:
            x = batch_subset_residual(x, lambda t: self._attn_residual(t, rope), rate)
            return batch_subset_residual(x, self._ffn_residual, rate)
        x = x + self.drop_path(self._attn_residual(x, rope))
        return x + self.drop_path(self._ffn_residual(x))
