"""KoLeo differential-entropy regulariser (Sablayrolles et al. 2018; SPEC §6.4)."""
import torch
import torch.nn.functional as F
from torch import nn

from dino_mm.registry import MODELS


@MODELS.register_module()
class KoLeoLoss(nn.Module):
    """``-mean(log(distance to nearest neighbour))`` of L2-normalised features.

    Computed in fp32 with autocast disabled, as the official loss intends.
    """

    def __init__(self) -> None:
        super().__init__()

    @staticmethod
    def pairwise_NNs_inner(x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (official name)
        """Index of each row's nearest neighbour (largest dot product, itself excluded).

        Args:
            x (torch.Tensor): (B, D) L2-normalised rows.
        """
        dots = x @ x.t()
        # -1 is the smallest possible cosine, so a row never picks itself.
        dots.fill_diagonal_(-1)
        return dots.max(dim=1).indices

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """Args:
            student_output (torch.Tensor): (B, D) backbone class tokens, B >= 2.
            eps (float): Normalisation / distance / log epsilon. Defaults to 1e-8.
        """
        if student_output.ndim != 2 or student_output.shape[0] < 2:
            raise ValueError('KoLeoLoss needs a (B, D) tensor with B >= 2 (a nearest neighbour '
                             f'must exist), got shape {tuple(student_output.shape)}.')
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), p=2, dim=-1, eps=eps)
            nn_idx = self.pairwise_NNs_inner(x)
            # pairwise_distance adds eps to the difference, like nn.PairwiseDistance(eps=1e-8).
            distances = F.pairwise_distance(x, x[nn_idx], p=2, eps=eps)
            return -torch.log(distances + eps).mean()
