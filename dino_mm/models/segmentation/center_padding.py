"""Center padding of images to a multiple of the ViT patch size.

The official DINOv2 / DINOv3 dense evaluations pad the *normalised* image with zeros
so that both spatial sizes become a multiple of the patch size, splitting the padding
between both sides (left/top gets the floor half). Patch embeddings reject other
sizes, and the decode head later resizes its logits to the unpadded size, so the
padding is never cropped away explicitly: we keep that behaviour for parity.
"""
import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def center_pad_amounts(size: int, multiple: int) -> Tuple[int, int]:
    """Return ``(before, after)`` padding that brings ``size`` to a multiple.

    Args:
        size (int): Current length of the dimension.
        multiple (int): The length must become a multiple of this (the patch size).

    Returns:
        tuple[int, int]: Padding before (floor half) and after (ceil half).
    """
    if multiple <= 0:
        raise ValueError(f'center padding needs a positive multiple, got {multiple}')
    total = math.ceil(size / multiple) * multiple - size
    before = total // 2
    return before, total - before


def center_pad(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Zero-pad the last two dims of ``x`` (N, C, H, W) to a multiple of ``multiple``.

    Args:
        x (Tensor): Batch of images, shape (N, C, H, W).
        multiple (int): Patch size.
        value (float): Pad value (the official code pads normalised images with 0).
            Defaults to 0.

    Returns:
        Tensor: Padded batch; ``x`` itself when no padding is needed.
    """
    top, bottom = center_pad_amounts(x.shape[-2], multiple)
    left, right = center_pad_amounts(x.shape[-1], multiple)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class CenterPadding(nn.Module):
    """Module form of :func:`center_pad`, usable as a forward pre-processing step.

    Args:
        multiple (int): Patch size to pad to.
    """

    def __init__(self, multiple: int) -> None:
        super().__init__()
        self.multiple = int(multiple)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return center_pad(x, self.multiple)

    def extra_repr(self) -> str:
        return f'multiple={self.multiple}'


class FrozenPaddedBackboneMixin:
    """Shared by the dino_mm segmentor and depth estimator (both mmseg ``BaseSegmentor``s).

    The official dense evaluations center-pad the input to a multiple of the patch size
    and keep a frozen backbone in eval mode (no dropout, and no DINOv3 RoPE train-time
    augmentation) even while the head trains. The class using it sets
    ``self.freeze_backbone`` and has ``backbone`` / ``with_neck`` / ``neck``.
    """

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def padded_backbone_features(self, inputs: torch.Tensor, multiple: int):
        """Backbone (and neck) outputs of ``inputs`` center-padded to ``multiple``."""
        if multiple > 1:
            inputs = center_pad(inputs, multiple)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            x = self.backbone(inputs)
        if self.with_neck:
            x = self.neck(x)
        return x
