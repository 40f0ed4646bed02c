"""Depth losses of the official DINOv2 depth evaluation: scale-invariant log loss and a
multi-scale gradient matching loss on log depth.

Both work on dense maps where ground-truth pixels equal to 0 (missing, e.g. sparse KITTI
LiDAR or the zero padding added by the data preprocessor) are ignored.
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from dino_mm.registry import MODELS


def _valid_mask(target: Tensor, max_depth: Optional[float]) -> Tensor:
    mask = target > 0
    if max_depth is not None:
        mask = mask & (target <= max_depth)
    return mask


@MODELS.register_module()
class SigLoss(nn.Module):
    """Scale-invariant logarithmic loss (Eigen et al. 2014) as used by the official depth heads.

    ``loss = loss_weight * sqrt(Var(g) + 0.15 * mean(g)^2)`` with
    ``g = log(pred + eps) - log(target + eps)`` over valid pixels, ``eps = 1e-3`` and the
    *unbiased* variance (``torch.var`` default, kept for parity).

    Args:
        valid_mask (bool): Ignore pixels whose target is 0 (or above ``max_depth``).
            Defaults to True.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        max_depth (float, optional): Targets above this are ignored as well. Defaults to None.
        warm_up (bool): For the first ``warm_iter`` calls return only the mean term
            ``sqrt(0.15 * mean(g)^2)`` (official option, off by default). Defaults to False.
        warm_iter (int): Number of warm-up calls. Defaults to 100.
        loss_name (str): Name under which the loss is logged; must contain ``loss``.
            Defaults to 'loss_sig'.
    """

    def __init__(self,
                 valid_mask: bool = True,
                 loss_weight: float = 1.0,
                 max_depth: Optional[float] = None,
                 warm_up: bool = False,
                 warm_iter: int = 100,
                 loss_name: str = 'loss_sig') -> None:
        super().__init__()
        self.valid_mask = valid_mask
        self.loss_weight = loss_weight
        self.max_depth = max_depth
        self.warm_up = warm_up
        self.warm_iter = warm_iter
        self.eps = 1e-3
        self.warm_up_counter = 0
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def sigloss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.valid_mask:
            mask = _valid_mask(target, self.max_depth)
            pred, target = pred[mask], target[mask]
        if pred.numel() < 2:
            # No (or one) valid pixel in the batch: a zero that keeps the graph alive beats NaN.
            return pred.sum() * 0.0
        g = torch.log(pred + self.eps) - torch.log(target + self.eps)
        if self.warm_up and self.warm_up_counter < self.warm_iter:
            self.warm_up_counter += 1
            return torch.sqrt(0.15 * g.mean().pow(2))
        return torch.sqrt(torch.var(g) + 0.15 * g.mean().pow(2))

    def forward(self, depth_pred: Tensor, depth_gt: Tensor) -> Tensor:
        """Args:
            depth_pred (Tensor): Predicted depth, any shape.
            depth_gt (Tensor): Ground truth of the same shape (0 = missing).
        """
        return self.loss_weight * self.sigloss(depth_pred, depth_gt)


@MODELS.register_module()
class GradientLoss(nn.Module):
    """Gradient matching loss on log depth at four scales (official depth training loss).

    At each scale the log-difference map is compared with itself shifted by two pixels
    vertically and horizontally; the absolute differences over pairs of valid pixels are
    summed and divided by the number of valid pixels. The scales are strides 1, 2, 4 and 6
    (the official code subsamples with ``[::2*i]`` for i = 1..3, so the last stride is 6, not 8;
    kept for parity).

    The official implementation squeezes the batch and indexes rows of a 3-D tensor when the
    batch holds more than one image, mixing images; here every image is handled separately
    and the per-image losses are averaged (identical for batch size 1).

    Args:
        valid_mask (bool): Ignore pixels whose target is 0 (or above ``max_depth``).
            Defaults to True.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        max_depth (float, optional): Targets above this are ignored. Defaults to None.
        loss_name (str): Logged name. Defaults to 'loss_grad'.
    """

    def __init__(self,
                 valid_mask: bool = True,
                 loss_weight: float = 1.0,
                 max_depth: Optional[float] = None,
                 loss_name: str = 'loss_grad') -> None:
        super().__init__()
        self.valid_mask = valid_mask
        self.loss_weight = loss_weight
        self.max_depth = max_depth
        self.eps = 1e-3
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def gradientloss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Loss of one image; ``pred`` and ``target`` are 2-D (H, W)."""
        total = pred.new_zeros(())
        for stride in (1, 2, 4, 6):
            p, t = pred[::stride, ::stride], target[::stride, ::stride]
            if self.valid_mask:
                mask = _valid_mask(t, self.max_depth).to(p.dtype)
                n = mask.sum()
            else:
                mask = torch.ones_like(t)
                n = torch.tensor(float(p.numel()), device=p.device)
            diff = (torch.log(p + self.eps) - torch.log(t + self.eps)) * mask
            v_grad = (diff[:-2, :] - diff[2:, :]).abs() * mask[:-2, :] * mask[2:, :]
            h_grad = (diff[:, :-2] - diff[:, 2:]).abs() * mask[:, :-2] * mask[:, 2:]
            total = total + (h_grad.sum() + v_grad.sum()) / n.clamp(min=1)
        return total

    def forward(self, depth_pred: Tensor, depth_gt: Tensor) -> Tensor:
        """Args:
            depth_pred (Tensor): (B, 1, H, W), (B, H, W) or (H, W) predicted depth.
            depth_gt (Tensor): Ground truth of the same shape (0 = missing).
        """
        if depth_pred.shape != depth_gt.shape:
            raise ValueError(f'GradientLoss: prediction shape {tuple(depth_pred.shape)} differs '
                             f'from target shape {tuple(depth_gt.shape)}.')
        pred = depth_pred.reshape(-1, *depth_pred.shape[-2:])
        gt = depth_gt.reshape(-1, *depth_gt.shape[-2:])
        losses = [self.gradientloss(p, t) for p, t in zip(pred, gt)]
        return self.loss_weight * torch.stack(losses).mean()
