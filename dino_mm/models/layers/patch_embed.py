"""Image to patch-token embedding (a strided convolution)."""
import math
from typing import Tuple

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project them.

    Written here instead of using timm's ``PatchEmbed`` because the two official
    behaviours differ in ways timm does not expose: DINOv2 rejects sizes that are not a
    multiple of the patch, DINOv3 lets the convolution drop the remainder, and the
    DINOv3 init resets the convolution with a uniform law.

    Args:
        patch_size (int): Patch side in pixels.
        in_channels (int): Image channels. Defaults to 3.
        embed_dim (int): Output channels. Defaults to 768.
        strict_img_size (bool): Raise when the input size is not a multiple of the
            patch (DINOv2); otherwise the remainder is cropped by the convolution
            (DINOv3). Defaults to True.
    """

    def __init__(self, patch_size: int, in_channels: int = 3, embed_dim: int = 768,
                 strict_img_size: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` explaining what is wrong with an input image batch."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'Expected an image batch of shape (B, C, H, W), got {shape}.')
        _, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f'Expected {self.in_channels} input channels, got {c} '
                             f'(input shape {tuple(x.shape)}); set in_channels={c} or '
                             'convert the images.')
        p = self.patch_size
        if h < p or w < p:
            raise ValueError(f'Input {h}x{w} is smaller than one {p}x{p} patch; resize the '
                             f'images to at least {p}x{p}.')
        if self.strict_img_size and (h % p or w % p):
            raise ValueError(f'Input size {h}x{w} is not a multiple of the patch size {p}; '
                             f'resize or pad to e.g. {math.ceil(h / p) * p}x'
                             f'{math.ceil(w / p) * p}.')

    def grid_size(self, img_hw: Tuple[int, int]) -> Tuple[int, int]:
        return img_hw[0] // self.patch_size, img_hw[1] // self.patch_size

    def reset_parameters(self) -> None:
        # DINOv3 reset: uniform(+-sqrt(1 / fan_in)) for weight and bias.
        bound = math.sqrt(1.0 / (self.in_channels * self.patch_size ** 2))
        nn.init.uniform_(self.proj.weight, -bound, bound)
        if self.proj.bias is not None:
            nn.init.uniform_(self.proj.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return tokens of shape (B, H/p * W/p, D), rows first."""
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)
