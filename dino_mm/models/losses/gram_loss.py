"""Gram anchoring loss of DINOv3 (docs/reference.md §4.2)."""
import torch
import torch.nn.functional as F
from torch import nn

from dino_mm.registry import MODELS


@MODELS.register_module()
class GramLoss(nn.Module):
    """MSE between the patch-similarity (Gram) matrices of student and Gram-teacher features.

    Args:
        apply_norm (bool): L2-normalise every patch vector first. Defaults to True.
        img_level (bool): Stored for config compatibility only: like the official loss,
            ``forward``'s own ``img_level`` argument decides. Defaults to True.
        remove_neg (bool): Zero negative similarities in both matrices. Defaults to True.
        remove_only_teacher_neg (bool): Zero negative similarities of the teacher only.
            Defaults to False. At most one of the two ``remove_*`` flags may be set.
    """

    def __init__(self,
                 apply_norm: bool = True,
                 img_level: bool = True,
                 remove_neg: bool = True,
                 remove_only_teacher_neg: bool = False) -> None:
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError('GramLoss: remove_neg and remove_only_teacher_neg are mutually '
                             'exclusive; set at most one of them to True.')
        self.apply_norm = apply_norm
        self.img_level = img_level
        self.remove_neg = remove_neg
        self.remove_only_teacher_neg = remove_only_teacher_neg

    def _similarity(self, feats: torch.Tensor, img_level: bool) -> torch.Tensor:
        feats = feats.float()
        if self.apply_norm:
            feats = F.normalize(feats, dim=-1)
        if not img_level and feats.ndim == 3:
            feats = feats.flatten(0, 1)
        return feats @ feats.transpose(-1, -2)

    def forward(self,
                output_feats: torch.Tensor,
                target_feats: torch.Tensor,
                img_level: bool = True) -> torch.Tensor:
        """Args:
            output_feats (torch.Tensor): Student patch features (B, P, D), or (B*P, D) when
                ``img_level`` is False.
            target_feats (torch.Tensor): Gram-teacher patch features, same shape.
            img_level (bool): One (P, P) Gram per image; otherwise a single (BP, BP) Gram
                over the whole batch. Defaults to True.
        """
        if img_level and (output_feats.ndim != 3 or target_feats.ndim != 3):
            raise ValueError('GramLoss(img_level=True) needs (B, P, D) features, got '
                             f'{tuple(output_feats.shape)} and {tuple(target_feats.shape)}.')
        if output_feats.shape != target_feats.shape:
            raise ValueError('GramLoss: student and teacher features must have the same shape '
                             f'(resize the teacher patch grid first), got '
                             f'{tuple(output_feats.shape)} vs {tuple(target_feats.shape)}.')
        target_sim = self._similarity(target_feats, img_level)
        student_sim = self._similarity(output_feats, img_level)
        if self.remove_neg:
            target_sim = target_sim.clamp(min=0)
            student_sim = student_sim.clamp(min=0)
        elif self.remove_only_teacher_neg:
            # The official code also zeroes student entries where *both* are negative, but
            # only after zeroing the teacher's negatives, so that condition never holds: the
            # effective behaviour (kept here) touches the teacher only.
            target_sim = target_sim.clamp(min=0)
        return F.mse_loss(student_sim, target_sim)
