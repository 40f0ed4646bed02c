"""Backbone side of the DINOv3 Plain-DETR detector, with the official module nesting.

The official detector nests its ViT as ``backbone.0._backbone.backbone`` (position
encoding wrapper -> windows wrapper -> multi-layer feature wrapper -> ViT), so the same
nesting is kept here for the state-dict keys to match; none of the wrappers owns a
parameter of its own.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.layers import SinePositionalEncoding
from torchvision.transforms.v2 import functional as TF

__all__ = ['ViTMultiLayerFeatures', 'WindowedFeatures', 'BackboneWithPositionEncoding',
           'default_layers_to_use', 'window_sizes', 'resize_padding_mask']


def default_layers_to_use(n_blocks: int) -> List[int]:
    """Blocks the official detector takes: the last of each quarter of the ViT."""
    return [m * n_blocks // 4 - 1 for m in range(1, 5)]


def window_sizes(length: int, n_windows: int, patch_size: int) -> List[int]:
    """Split ``length`` pixels into ``n_windows`` spans, all but the last patch multiples.

    Each span is ``ceil((length // n) / patch) * patch``; the last one takes the rest.

    Raises:
        ValueError: if the input is too small to leave the last window any pixel.
    """
    size = math.ceil((length // n_windows) / patch_size) * patch_size
    sizes = [size] * (n_windows - 1) + [length - size * (n_windows - 1)]
    if sizes[-1] <= 0:
        raise ValueError(f'An input of {length} pixels is too small for {n_windows} '
                         f'windows of {size} pixels (patch {patch_size}).')
    return sizes


def resize_padding_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, H, W) bool padding mask (True = padding)."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


class ViTMultiLayerFeatures(nn.Module):
    """Concatenated, normalised patch maps of several ViT blocks (official ``DINOBackbone``).

    Args:
        backbone (nn.Module): A :class:`DinoVisionTransformer` (kept as ``backbone``).
        layers_to_use (Sequence[int], optional): Block indices. Defaults to the last
            block of each quarter (``[9, 19, 29, 39]`` for the 40-block ViT-7B).
    """

    def __init__(self, backbone: nn.Module, layers_to_use: Optional[Sequence[int]] = None
                 ) -> None:
        super().__init__()
        self.backbone = backbone
        self.patch_size = backbone.patch_size
        self.layers_to_use = (list(layers_to_use) if layers_to_use is not None else
                              default_layers_to_use(backbone.n_blocks))
        self.num_channels = backbone.embed_dim * len(self.layers_to_use)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, len(layers) * D, H / p, W / p) features."""
        maps = self.backbone.get_intermediate_layers(images, n=self.layers_to_use,
                                                     reshape=True, norm=True)
        return torch.cat(list(maps), dim=1)


class WindowedFeatures(nn.Module):
    """Window + low-resolution global features (official ``WindowsWrapper``).

    The padded input is cut into ``n x n`` windows (sizes from :func:`window_sizes`),
    each run through the feature module and tiled back into one full-resolution map;
    the whole input is also resized to the size of the first window, run once, and its
    map upsampled to the tiled map's size. Both are concatenated along channels, so
    the output has twice the channels of the wrapped module.

    Args:
        backbone (ViTMultiLayerFeatures): Feature module (kept as ``_backbone``).
        n_windows_sqrt (int): Windows per side (3 for the released ViT-7B detector).
    """

    def __init__(self, backbone: ViTMultiLayerFeatures, n_windows_sqrt: int) -> None:
        super().__init__()
        self._backbone = backbone
        self.n_windows = n_windows_sqrt
        self.patch_size = backbone.patch_size
        self.num_channels = 2 * backbone.num_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images (H, W patch multiples) -> (B, 2C, H / p, W / p)."""
        h, w = images.shape[-2:]
        heights = window_sizes(h, self.n_windows, self.patch_size)
        widths = window_sizes(w, self.n_windows, self.patch_size)
        rows = []
        top = 0
        for wh in heights:
            left, row = 0, []
            for ww in widths:
                row.append(self._backbone(images[..., top:top + wh, left:left + ww]))
                left += ww
            rows.append(torch.cat(row, dim=-1))
            top += wh
        tiled = torch.cat(rows, dim=-2)
        # torchvision's resize (bilinear, antialiased) is the one the official model uses.
        small = TF.resize(images, [heights[0], widths[0]], antialias=True)
        global_map = TF.resize(self._backbone(small), list(tiled.shape[-2:]), antialias=True)
        return torch.cat([global_map, tiled], dim=1)


class BackboneWithPositionEncoding(nn.Sequential):
    """``[feature module, [sine position encoding]]`` (official nesting, no parameters).

    Args:
        features (nn.Module): :class:`WindowedFeatures` or :class:`ViTMultiLayerFeatures`.
        hidden_dim (int): Transformer width; the encoding has ``hidden_dim`` channels.
    """

    def __init__(self, features: nn.Module, hidden_dim: int) -> None:
        # Official encoding: normalised sine with a -0.5 offset, eps 1e-6.
        pos = SinePositionalEncoding(hidden_dim // 2, normalize=True, offset=-0.5, eps=1e-6)
        super().__init__(features, nn.ModuleList([pos]))
        self.num_channels = features.num_channels
        self.patch_size = features.patch_size

    def forward(self, images: torch.Tensor, mask: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, their padding mask and their position encoding.

        Args:
            images (Tensor): (B, 3, H, W) normalised, zero-padded images.
            mask (Tensor): (B, H, W) bool, True on padded pixels.

        Returns:
            tuple: (B, C, h, w) features, (B, h, w) mask, (B, hidden_dim, h, w) encoding.
        """
        feats = self[0](images)
        feat_mask = resize_padding_mask(mask, feats.shape[-2:])
        pos = self[1][0](feat_mask).to(feats.dtype)
        return feats, feat_mask, pos
