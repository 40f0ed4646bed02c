"""iBOT masked-patch cross-entropy (docs/reference.md §3.5)."""
from typing import Any, Optional

import torch
import torch.nn.functional as F

from dino_mm.registry import MODELS
from dino_mm.utils.dist import all_reduce
from .centering import LazyCenterMixin, sinkhorn_knopp


def _patch_cross_entropy(teacher: torch.Tensor, student: torch.Tensor,
                         student_temp: float) -> torch.Tensor:
    # fp32 like the official fused xFormers kernel (its non-xFormers fallback keeps the input
    # dtype; both agree in fp32).
    return (teacher.float() * F.log_softmax(student.float() / student_temp, dim=-1)).sum(dim=-1)


@MODELS.register_module()
class iBOTPatchLoss(LazyCenterMixin):  # noqa: N801 (official class name)
    """iBOT patch loss with softmax-centering or Sinkhorn-Knopp teacher targets.

    Same constructor, methods and ``center`` buffer (shape (1, 1, K)) as the official class.

    Args:
        patch_out_dim (int): Number of patch prototypes ``K``.
        student_temp (float): Student softmax temperature. Defaults to 0.1.
        center_momentum (float): EMA momentum of the teacher center. Defaults to 0.9.
    """

    def __init__(self,
                 patch_out_dim: int,
                 student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__((1, 1, patch_out_dim), center_momentum)
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp

    @property
    def len_teacher_patch_tokens(self):
        return self._n_center_rows

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: torch.Tensor,
                               teacher_temp: float) -> torch.Tensor:
        """Targets ``softmax((t - center) / teacher_temp)``.

        The fp32 center promotes fp16 logits to fp32 (official behaviour,
        docs/reference.md §6.20).

        Args:
            teacher_patch_tokens (torch.Tensor): Teacher patch logits, (..., K).
            teacher_temp (float): Teacher temperature.
        """
        self.apply_center_update()
        return F.softmax((teacher_patch_tokens - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self,
                               teacher_output: torch.Tensor,
                               teacher_temp: float,
                               n_masked_patches_tensor: torch.Tensor,
                               n_iterations: int = 3,
                               group: Optional[Any] = None) -> torch.Tensor:
        """Sinkhorn-Knopp targets for the masked patches of this rank.

        Args:
            teacher_output (torch.Tensor): Teacher logits of the masked patches, (M, K).
            teacher_temp (float): Teacher temperature.
            n_masked_patches_tensor (torch.Tensor): Number of masked patches on this rank
                (shape (1,)); summed over ranks to get the column normaliser. Unlike the
                official code the caller's tensor is not modified in place.
            n_iterations (int): Normalisation rounds. Defaults to 3.
            group (ProcessGroup, optional): The ranks normalised together (None: all).
        """
        n_total = torch.as_tensor(n_masked_patches_tensor,
                                  device=teacher_output.device).clone()
        all_reduce(n_total, group=group)
        return sinkhorn_knopp(teacher_output, teacher_temp, n_total, n_iterations, group)

    def forward(self, student_patch_tokens: torch.Tensor, teacher_patch_tokens: torch.Tensor,
                student_masks_flat: torch.Tensor) -> torch.Tensor:
        """Dense variant: per-image mean over masked tokens, then mean over images.

        Args:
            student_patch_tokens (torch.Tensor): (B, N, K) student logits.
            teacher_patch_tokens (torch.Tensor): (B, N, K) teacher targets.
            student_masks_flat (torch.Tensor): (B, N) bool masks.
        """
        loss = _patch_cross_entropy(teacher_patch_tokens, student_patch_tokens,
                                    self.student_temp)
        masks = student_masks_flat.float()
        loss = (loss * masks).sum(dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        return -loss.mean()

    def forward_masked(self,
                       student_patch_tokens_masked: torch.Tensor,
                       teacher_patch_tokens_masked: torch.Tensor,
                       student_masks_flat: torch.Tensor,
                       n_masked_patches: Optional[int] = None,
                       masks_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss on gathered masked tokens; token weight = 1 / (#masked in its image).

        Args:
            student_patch_tokens_masked (torch.Tensor): (M, K) student logits of masked tokens
                (row-major order of ``student_masks_flat``).
            teacher_patch_tokens_masked (torch.Tensor): (M, K) teacher targets.
            student_masks_flat (torch.Tensor): (B, N) bool masks; ``B`` is the normaliser.
            n_masked_patches (int, optional): Keep only the first rows (drops padding).
            masks_weight (torch.Tensor, optional): (M,) per-token weights; derived from the
                masks when omitted.

        Returns:
            torch.Tensor: ``-sum(weight * CE) / B``.
        """
        loss = _patch_cross_entropy(teacher_patch_tokens_masked, student_patch_tokens_masked,
                                    self.student_temp)
        if masks_weight is None:
            per_image = 1 / student_masks_flat.sum(-1).clamp(min=1.0)
            masks_weight = per_image.unsqueeze(-1).expand_as(student_masks_flat)[
                student_masks_flat]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        loss = loss * masks_weight
        return -loss.sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: torch.Tensor) -> None:
        """Queue an EMA update of ``center`` (mean over tokens, then over leading rows).

        Args:
            teacher_patch_tokens (torch.Tensor): (R, M, K) teacher logits; the official
                meta-architecture passes the masked tokens as a single row (1, M, K).
        """
        if teacher_patch_tokens.ndim != 3:
            raise ValueError('iBOTPatchLoss.update_center expects (rows, tokens, K) logits, got '
                             f'shape {tuple(teacher_patch_tokens.shape)}; add a leading dim '
                             'with .unsqueeze(0) for gathered masked tokens.')
        batch_sum = teacher_patch_tokens.mean(1).sum(dim=0, keepdim=True)
        self._start_center_update(batch_sum, len(teacher_patch_tokens))
