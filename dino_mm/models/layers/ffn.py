"""Feed-forward layers: GELU MLP and the two SwiGLU layouts (DINOv2 fused, DINOv3 split)."""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

__all__ = ['Mlp', 'SwiGLUFFNFused', 'SwiGLUFFN', 'swiglu_hidden_dim_v2', 'swiglu_hidden_dim_v3',
           'build_ffn']


def swiglu_hidden_dim_v2(hidden_features: int) -> int:
    """DINOv2 rule: two thirds of the MLP width, rounded to a multiple of 8 (+7 // 8)."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


def swiglu_hidden_dim_v3(hidden_features: int, align_to: int = 8) -> int:
    """DINOv3 rule: two thirds of the MLP width, rounded up to a multiple of ``align_to``."""
    d = int(hidden_features * 2 / 3)
    return d + (-d % align_to)


class SwiGLUFFNFused(nn.Module):
    """DINOv2 SwiGLU with one fused input projection ``w12`` (gate = first half).

    The key layout (``w12``, ``w3``) is the one of the official ViT-g checkpoints, both
    with and without xFormers; timm's ``SwiGLU`` names its weights differently.

    Args:
        in_features (int): Input channels.
        hidden_features (int, optional): MLP width before the 2/3 rule. Defaults to
            ``in_features``.
        out_features (int, optional): Output channels. Defaults to ``in_features``.
        bias (bool): Biases in both projections. Defaults to True.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden = swiglu_hidden_dim_v2(hidden_features or in_features)
        self.hidden_features = hidden
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class SwiGLUFFN(nn.Module):
    """DINOv3 SwiGLU with separate ``w1`` (gate), ``w2`` (value) and ``w3`` (output).

    Args:
        in_features (int): Input channels.
        hidden_features (int, optional): MLP width before the 2/3 rule. Defaults to
            ``in_features``.
        out_features (int, optional): Output channels. Defaults to ``in_features``.
        bias (bool): Biases in all projections. Defaults to True.
        align_to (int): The hidden width is rounded up to a multiple of this. Defaults
            to 8.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, bias: bool = True,
                 align_to: int = 8) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden = swiglu_hidden_dim_v3(hidden_features or in_features, align_to)
        self.hidden_features = hidden
        self.w1 = nn.Linear(in_features, hidden, bias=bias)
        self.w2 = nn.Linear(in_features, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


FFN_LAYERS = ('mlp', 'swiglufused', 'swiglu', 'swiglu32', 'swiglu64', 'swiglu128')


def build_ffn(ffn_layer: str, dim: int, hidden_features: int, bias: bool = True,
              version: str = 'v3') -> nn.Module:
    """Build the feed-forward layer named by an official ``ffn_layer`` key.

    Args:
        ffn_layer (str): 'mlp', 'swiglufused' (DINOv2 fused layout) or 'swiglu' /
            'swiglu32' / 'swiglu64' / 'swiglu128' (DINOv3 split layout, align 8/32/64/128).
            For DINOv2 'swiglu' means the fused layout, as in the official code.
        dim (int): Input/output channels.
        hidden_features (int): ``dim * ffn_ratio``.
        bias (bool): Use biases. Defaults to True.
        version (str): 'v2' or 'v3'. Defaults to 'v3'.
    """
    if ffn_layer == 'mlp':
        # exact (erf) GELU as in both official repos
        return Mlp(dim, hidden_features, act_layer=nn.GELU, bias=bias)
    if ffn_layer == 'swiglufused' or (ffn_layer == 'swiglu' and version == 'v2'):
        return SwiGLUFFNFused(dim, hidden_features, bias=bias)
    if ffn_layer.startswith('swiglu') and ffn_layer in FFN_LAYERS:
        align = int(ffn_layer[len('swiglu'):] or 8)
        return SwiGLUFFN(dim, hidden_features, bias=bias, align_to=align)
    raise KeyError(f'Unknown ffn_layer {ffn_layer!r}; choose one of {FFN_LAYERS}.')
