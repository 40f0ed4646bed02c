"""Normalisation layers selected by the official ``norm_layer`` keys."""
from functools import partial
from typing import Callable

import torch
from torch import nn

__all__ = ['RMSNorm', 'build_norm_layer', 'NORM_LAYERS']


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 and cast back (DINOv3 ``rmsnorm``).

    ``torch.nn.RMSNorm`` computes in the input dtype; DINOv3 upcasts first, which matters
    under bf16 autocast, so this small class is kept.

    Args:
        dim (int): Channel count.
        eps (float): Added to the mean square. Defaults to 1e-5.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


# 'layernormbf16' is a historical name: it is a plain LayerNorm with eps 1e-5.
NORM_LAYERS = {
    'layernorm': partial(nn.LayerNorm, eps=1e-6),
    'layernormbf16': partial(nn.LayerNorm, eps=1e-5),
    'rmsnorm': partial(RMSNorm, eps=1e-5),
}


def build_norm_layer(name: str) -> Callable[[int], nn.Module]:
    """Return a ``dim -> nn.Module`` factory for an official ``norm_layer`` key."""
    if name not in NORM_LAYERS:
        raise KeyError(f'Unknown norm_layer {name!r}; choose one of {sorted(NORM_LAYERS)}.')
    return NORM_LAYERS[name]
