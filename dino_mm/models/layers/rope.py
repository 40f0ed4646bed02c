"""DINOv3 2D rotary position embedding over the patch grid."""
import math
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ['RopePositionEmbedding', 'rope_rotate_half', 'rope_apply']

_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16,
           'fp64': torch.float64}


def rope_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map the halves [x1, x2] of the last dim to [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., N, d_h) by angles given as ``sin`` / ``cos`` of shape (N, d_h)."""
    return x * cos + rope_rotate_half(x) * sin


class RopePositionEmbedding(nn.Module):
    """Axial RoPE tables for an H x W patch grid, as in DINOv3.

    Coordinates are patch centres mapped to [-1, 1]; each head dim is split into
    d_h/4 frequencies for rows then d_h/4 for columns, tiled twice (rotate-half layout).

    Args:
        embed_dim (int): Model width D.
        num_heads (int): Attention heads; the head dim D / num_heads must be divisible by 4.
        base (float, optional): Period base (``periods = base ** (j / (d_h/4))``).
            Defaults to 100.0. Exactly one of ``base`` and (``min_period``, ``max_period``)
            must be set.
        min_period (float, optional): Smallest period (log-spaced periods).
        max_period (float, optional): Largest period.
        normalize_coords (str): 'separate' (divide rows by H and columns by W), 'max' or
            'min' (divide both by max(H, W) or min(H, W)). Defaults to 'separate'.
        shift_coords (float, optional): Train-time uniform shift range per axis.
        jitter_coords (float, optional): Train-time per-axis log-uniform scale range.
        rescale_coords (float, optional): Train-time shared log-uniform scale range.
        dtype (str | torch.dtype): Dtype of the ``periods`` buffer and of the tables
            ('fp32', 'bf16', ...). Defaults to 'fp32' (hub models); training configs of
            the official code use 'bf16'.
    """

    def __init__(self, embed_dim: int, num_heads: int, base: Optional[float] = 100.0,
                 min_period: Optional[float] = None, max_period: Optional[float] = None,
                 normalize_coords: str = 'separate', shift_coords: Optional[float] = None,
                 jitter_coords: Optional[float] = None, rescale_coords: Optional[float] = None,
                 dtype='fp32') -> None:
        super().__init__()
        head_dim = embed_dim // num_heads
        if embed_dim % num_heads or head_dim % 4:
            raise ValueError(f'RoPE needs embed_dim ({embed_dim}) divisible by num_heads '
                             f'({num_heads}) and a head dim divisible by 4, got {head_dim}.')
        periods_given = (min_period is not None, max_period is not None)
        if not ((base is not None and periods_given == (False, False)) or
                (base is None and periods_given == (True, True))):
            raise ValueError('Set either rope base, or both min_period and max_period; got '
                             f'base={base}, min_period={min_period}, max_period={max_period}.')
        if normalize_coords not in ('separate', 'max', 'min'):
            raise ValueError(f"normalize_coords must be 'separate', 'max' or 'min', got "
                             f'{normalize_coords!r}.')
        self.head_dim = head_dim
        self.base = base
        self.min_period = min_period
        self.max_period = max_period
        self.normalize_coords = normalize_coords
        self.shift_coords = shift_coords
        self.jitter_coords = jitter_coords
        self.rescale_coords = rescale_coords
        self.dtype = _DTYPES[dtype] if isinstance(dtype, str) else (dtype or torch.float32)
        self.register_buffer('periods', torch.empty(head_dim // 4, dtype=self.dtype),
                             persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = self.head_dim // 4
        device = self.periods.device
        if self.base is not None:
            exponent = 2 * torch.arange(n, device=device, dtype=self.dtype) / (self.head_dim // 2)
            periods = self.base ** exponent
        else:
            ratio = self.max_period / self.min_period
            exponent = torch.linspace(0, 1, n, device=device, dtype=self.dtype)
            periods = self.max_period * ratio ** (exponent - 1)
        self.periods.data = periods

    def _coords(self, H: int, W: int) -> torch.Tensor:
        dd = dict(device=self.periods.device, dtype=self.dtype)
        if self.normalize_coords == 'separate':
            den_h, den_w = H, W
        elif self.normalize_coords == 'max':
            den_h = den_w = max(H, W)
        else:
            den_h = den_w = min(H, W)
        coords_h = torch.arange(0.5, H, **dd) / den_h
        coords_w = torch.arange(0.5, W, **dd) / den_w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing='ij'), dim=-1)
        coords = 2.0 * coords.flatten(0, 1) - 1.0
        if self.training:
            # Augmentations draw from torch's RNG in this order: shift, jitter, rescale.
            if self.shift_coords is not None:
                s = self.shift_coords
                coords = coords + torch.empty(2, **dd).uniform_(-s, s)[None, :]
            if self.jitter_coords is not None:
                j = math.log(self.jitter_coords)
                coords = coords * torch.empty(2, **dd).uniform_(-j, j).exp()[None, :]
            if self.rescale_coords is not None:
                r = math.log(self.rescale_coords)
                coords = coords * torch.empty(1, **dd).uniform_(-r, r).exp()
        return coords

    def forward(self, *, H: int, W: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(sin, cos)``, each of shape (H*W, head_dim), in the rope dtype."""
        # Autocast would run the products below in half precision; the official hub
        # models compute the tables in fp32 whatever the surrounding autocast says.
        device_type = self.periods.device.type
        with torch.autocast(device_type=device_type if device_type in ('cuda', 'cpu') else 'cpu',
                            enabled=False):
            coords = self._coords(H, W)
            angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]
            angles = angles.flatten(1, 2).tile(2)
            return torch.sin(angles), torch.cos(angles)

    def extra_repr(self) -> str:
        return (f'head_dim={self.head_dim}, base={self.base}, normalize={self.normalize_coords},'
                f' dtype={self.dtype}')
