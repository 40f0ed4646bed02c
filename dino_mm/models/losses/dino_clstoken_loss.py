"""DINO cross-entropy between student and teacher class-token prototypes (docs/reference.md §3.5,
§4.1)."""
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from dino_mm.registry import MODELS
from dino_mm.utils.dist import get_world_size
from .centering import LazyCenterMixin, sinkhorn_knopp


@MODELS.register_module()
class DINOLoss(LazyCenterMixin):
    """DINO class-token loss with softmax-centering or Sinkhorn-Knopp teacher targets.

    Same constructor, methods and ``center`` buffer as the official ``DINOLoss`` so official
    training code can use it unchanged; it also runs without a process group.

    Args:
        out_dim (int): Number of prototypes ``K``.
        student_temp (float): Student softmax temperature. Defaults to 0.1.
        center_momentum (float): EMA momentum of the teacher center. Defaults to 0.9.
    """

    def __init__(self,
                 out_dim: int,
                 student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__((1, out_dim), center_momentum)
        self.out_dim = out_dim
        self.student_temp = student_temp

    @property
    def len_teacher_output(self):
        return self._n_center_rows

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor,
                               teacher_temp: float) -> torch.Tensor:
        """Targets ``softmax((t - center) / teacher_temp)`` (applies any pending update first).

        Args:
            teacher_output (torch.Tensor): Teacher logits, shape (N, K).
            teacher_temp (float): Teacher temperature.
        """
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self,
                               teacher_output: torch.Tensor,
                               teacher_temp: float,
                               n_iterations: int = 3,
                               group: Optional[Any] = None) -> torch.Tensor:
        """Sinkhorn-Knopp targets; every rank of ``group`` contributes ``N`` samples.

        Args:
            teacher_output (torch.Tensor): Teacher logits of this rank, shape (N, K).
            teacher_temp (float): Teacher temperature.
            n_iterations (int): Normalisation rounds. Defaults to 3.
            group (ProcessGroup, optional): The ranks normalised together (None: all).
        """
        n_samples = teacher_output.shape[0] * get_world_size(group)
        return sinkhorn_knopp(teacher_output, teacher_temp, n_samples, n_iterations, group)

    def forward(self,
                student_output_list: Sequence[torch.Tensor],
                teacher_out_softmaxed_centered_list: Sequence[torch.Tensor],
                ignore_diagonal: bool = False) -> torch.Tensor:
        """Sum over (student crop, teacher crop) pairs of the batch-mean cross-entropy.

        Args:
            student_output_list (Sequence[torch.Tensor]): Student logits per crop, each (B, K)
                (a (S, B, K) tensor also works).
            teacher_out_softmaxed_centered_list (Sequence[torch.Tensor]): Teacher targets per
                crop, each (B, K).
            ignore_diagonal (bool): Skip pairs with the same crop index (DINOv3
                ``global_ignore_diagonal``; only meaningful when both lists hold the same crops
                in the same order). Defaults to False.

        Returns:
            torch.Tensor: Scalar loss, *not* divided by the number of pairs (official v2).
        """
        total_loss = 0
        for s_idx, student in enumerate(student_output_list):
            log_probs = F.log_softmax(student / self.student_temp, dim=-1)
            for t_idx, target in enumerate(teacher_out_softmaxed_centered_list):
                if ignore_diagonal and s_idx == t_idx:
                    continue
                total_loss = total_loss - (target * log_probs).sum(dim=-1).mean()
        return total_loss

    def cross_entropy_mean(self,
                           student_logits: torch.Tensor,
                           teacher_probs: torch.Tensor,
                           ignore_diagonal: bool = False) -> torch.Tensor:
        """DINOv3-style loss: the mean cross-entropy over all counted (sample, pair) terms.

        Args:
            student_logits (torch.Tensor): (S, B, K) student logits.
            teacher_probs (torch.Tensor): (T, B, K) teacher targets.
            ignore_diagonal (bool): Drop the pairs ``s == t``; the normaliser becomes
                ``B*S*T - B*min(S, T)``. Defaults to False.
        """
        if student_logits.ndim != 3 or teacher_probs.ndim != 3:
            raise ValueError('cross_entropy_mean expects (crops, batch, prototypes) tensors, got '
                             f'{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}')
        n_student, batch, _ = student_logits.shape
        n_teacher = teacher_probs.shape[0]
        log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        pair_loss = -torch.einsum('sbk,tbk->st', log_probs, teacher_probs.float())
        n_terms = batch * n_student * n_teacher
        if ignore_diagonal:
            n_diag = min(n_student, n_teacher)
            pair_loss = pair_loss * (1 - torch.eye(n_student, n_teacher, device=pair_loss.device,
                                                   dtype=pair_loss.dtype))
            n_terms -= batch * n_diag
        return pair_loss.sum() / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Queue an EMA update of ``center`` toward the mean teacher logit (all ranks).

        Args:
            teacher_output (torch.Tensor): Teacher logits, shape (N, K).
        """
        self._start_center_update(teacher_output.sum(dim=0, keepdim=True), len(teacher_output))
