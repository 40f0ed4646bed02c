"""Teacher-target helpers shared by the DINO (class token) and iBOT (patch) losses.

Two ways of turning teacher logits into targets exist in DINOv2 (docs/reference.md §3.4):

* softmax-centering: ``softmax((t - c) / temp)`` with an EMA ``center`` ``c``. The batch mean
  that feeds the EMA is all-reduced asynchronously and only folded into ``c`` right before the
  center is next needed, so the reduction overlaps with the student forward/backward.
* Sinkhorn-Knopp: three rounds of alternating prototype / sample normalisation of
  ``exp(t / temp)``, with the sums taken over all ranks.
"""
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from dino_mm.utils.dist import all_reduce, get_world_size


class LazyCenterMixin(nn.Module):
    """Owns a ``center`` buffer updated by EMA with a deferred, possibly async reduction.

    Args:
        center_shape (Sequence[int]): Shape of the ``center`` buffer (the official shapes are
            ``(1, K)`` for the class-token loss and ``(1, 1, K)`` for the patch loss).
        center_momentum (float): EMA momentum of the center.
    """

    def __init__(self, center_shape: Sequence[int], center_momentum: float) -> None:
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer('center', torch.zeros(*center_shape))
        # Same attribute names as the official losses so ported code that peeks at them works.
        self.updated = True
        self.reduce_handle = None
        self.async_batch_center: Optional[torch.Tensor] = None
        self._n_center_rows: Optional[int] = None

    @torch.no_grad()
    def _start_center_update(self, batch_sum: torch.Tensor, n_rows: int) -> None:
        """Record a per-rank sum of teacher outputs and launch its all-reduce."""
        self.updated = False
        self._n_center_rows = n_rows
        self.async_batch_center = batch_sum
        self.reduce_handle = all_reduce(self.async_batch_center, async_op=True)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Fold the pending batch statistics into ``center`` (waits for the reduction)."""
        if self.updated:
            return
        if self.reduce_handle is not None:
            self.reduce_handle.wait()
            self.reduce_handle = None
        batch_center = self.async_batch_center / (self._n_center_rows * get_world_size())
        self.center = (self.center * self.center_momentum +
                       batch_center * (1 - self.center_momentum))
        self.updated = True

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The official code saves the center without the still-pending update, so a resumed run
        # silently drops one EMA step. Folding it in first gives the exact center that the next
        # iteration would have used, making resume bit-exact.
        self.apply_center_update()
        super()._save_to_state_dict(destination, prefix, keep_vars)


@torch.no_grad()
def sinkhorn_knopp(teacher_output: torch.Tensor,
                   teacher_temp: float,
                   n_samples: Union[int, torch.Tensor],
                   n_iterations: int = 3,
                   group: Optional[Any] = None) -> torch.Tensor:
    """Sinkhorn-Knopp assignment of teacher logits, summing over all ranks.

    Args:
        teacher_output (torch.Tensor): Local teacher logits, shape (N, K).
        teacher_temp (float): Teacher temperature.
        n_samples (int | torch.Tensor): Number of samples over *all* ranks (the column
            normaliser ``B``); an already reduced scalar tensor is accepted.
        n_iterations (int): Rounds of row/column normalisation. Defaults to 3.
        group (ProcessGroup, optional): The ranks summed over (None: all ranks).

    Returns:
        torch.Tensor: fp32 targets of shape (N, K); each row sums to 1.
    """
    # Kept K x N (prototypes first) like the paper's notation; computed in fp32 because exp()
    # of logits / 0.04 overflows fp16.
    q = torch.exp(teacher_output.float() / teacher_temp).t()
    n_prototypes = q.shape[0]
    total = q.sum()
    all_reduce(total, group=group)
    q /= total
    for _ in range(n_iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        all_reduce(row_sums, group=group)
        q /= row_sums
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()
