"""Per-channel residual scaling (LayerScale, CaiT) with the official ``gamma`` key."""
import torch
from torch import nn


class LayerScale(nn.Module):
    """Multiply the last dimension by a learned vector ``gamma``.

    timm's ``LayerScale`` has the same key but no ``reset_parameters``; the DINOv3
    ``init_weights`` re-fills ``gamma`` with the init value, so the reset lives here.

    Args:
        dim (int): Channel count.
        init_values (float): Initial value of every entry of ``gamma``. Defaults to 1e-5.
        inplace (bool): Scale in place (saves memory at inference). Defaults to False.
    """

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.init_values = init_values
        self.inplace = inplace
        self.gamma = nn.Parameter(torch.full((dim, ), float(init_values)))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma

    def extra_repr(self) -> str:
        return f'dim={self.gamma.shape[0]}, init_values={self.init_values}'
