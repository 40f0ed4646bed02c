"""Stochastic depth in the two flavours used by DINOv2 / DINOv3.

``DropPath`` (classic, per-sample mask) is timm's. The batch-subset variant is written
here because no library has it: it runs the residual branch only on a random subset of
the batch and adds it back scaled, which saves the compute of the dropped samples and
consumes the RNG differently from a per-sample mask.
"""
from typing import Callable

import torch
from timm.layers import DropPath

__all__ = ['DropPath', 'batch_subset_residual']


def batch_subset_residual(x: torch.Tensor, residual_fn: Callable[[torch.Tensor], torch.Tensor],
                          drop_ratio: float) -> torch.Tensor:
    """Return ``x`` plus a residual computed on a random subset of the batch.

    ``max(int(B * (1 - drop_ratio)), 1)`` samples are drawn without replacement; their
    residual is scaled by ``B / kept`` so the expectation matches the full residual.

    Args:
        x (Tensor): Input of shape (B, ...).
        residual_fn (Callable): Branch applied to the kept samples (already including
            the layer scale).
        drop_ratio (float): Fraction of samples whose residual is dropped.

    Returns:
        Tensor: Same shape as ``x``.
    """
    batch = x.shape[0]
    kept = max(int(batch * (1 - drop_ratio)), 1)
    index = torch.randperm(batch, device=x.device)[:kept]
    residual = residual_fn(x[index])
    scale = batch / kept
    return torch.index_add(x.flatten(1), 0, index,
                           residual.flatten(1).to(x.dtype), alpha=scale).view_as(x)
