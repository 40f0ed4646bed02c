"""KoLeo differential-entropy regulariser (Sablayrolles et al. 2018;
docs/reference.md §3.5).

:class:`KoLeoLoss` looks for nearest neighbours inside the batch of one rank;
:class:`KoLeoLossDistributed` (DINOv3) inside the batch gathered from all ranks, or inside
groups of it.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dino_mm.registry import MODELS
from dino_mm.utils.dist import all_gather_with_grad, get_rank, get_world_size


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


@MODELS.register_module()
class KoLeoLossDistributed(nn.Module):
    """KoLeo with nearest neighbours searched in the batch of all ranks (DINOv3).

    What one rank computes, following the official DINOv3 ``KoLeoLossDistributed``:

    1. L2-normalise its ``(B, D)`` rows (fp32, autocast off, as :class:`KoLeoLoss`);
    2. gather the normalised rows of every rank **with gradient**: the gather's backward
       sums over ranks the gradient reaching each rank's rows, so a row also receives the
       gradient of the other ranks' losses in which it is a neighbour;
    3. cut the gathered ``(W * B, D)`` batch (rank order) into consecutive groups of
       ``loss_group_size`` rows (the whole batch when None) and keep the group this rank's
       rows belong to;
    4. for each local row pick, without gradient, the ``topk`` rows of the group with the
       largest cosine similarity, the row itself excluded (its score is set to -1);
    5. return ``-mean(log(||x - x_nn||_2 + eps))`` over the ``B * topk`` (row, neighbour)
       pairs; the distances carry gradient to the local row and to the gathered neighbour.

    Relation to one process: every rank's loss is a mean over its own rows, so the mean of
    the rank losses is the mean over all ``W * B`` rows of the global batch of
    ``-log(distance to each of its topk nearest neighbours in its group)``, which is what
    one process computes on the concatenated batch (:class:`KoLeoLoss` for ``topk=1`` and
    no groups). The local gradient of a rank's rows is ``W`` times that single-process
    gradient; data-parallel gradient averaging (DDP, FSDP) divides it by ``W`` again, so
    the update is the single-process one.

    Official use: ``dino.koleo_loss_distributed: true`` with
    ``koleo_distributed_loss_group_size: 16`` in the ViT-7B high-resolution adaptation
    stage only; every other released recipe uses the per-rank :class:`KoLeoLoss`. One
    difference from the official class: the rows are cast to fp32 before normalising and
    gathering (the official code only casts the distances), as :class:`KoLeoLoss` does.

    Args:
        topk (int): Neighbours per row. Defaults to 1.
        loss_group_size (int, optional): Rows per neighbour set; a multiple of the
            per-rank batch that divides the global batch. None: the global batch.
    """

    def __init__(self, topk: int = 1, loss_group_size: Optional[int] = None) -> None:
        super().__init__()
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f'KoLeoLossDistributed: topk must be an int >= 1, got {topk!r}.')
        if loss_group_size is not None and (isinstance(loss_group_size, bool)
                                            or not isinstance(loss_group_size, int)
                                            or loss_group_size < 2):
            raise ValueError('KoLeoLossDistributed: loss_group_size must be None (the global '
                             f'batch) or an int >= 2, got {loss_group_size!r}.')
        self.topk = topk
        self.loss_group_size = loss_group_size

    def _group(self, local_b: int, world: int, rank: int) -> tuple:
        """``(group index, position of this rank in the group, group size)``."""
        global_b = local_b * world
        size = self.loss_group_size if self.loss_group_size is not None else global_b
        if size % local_b != 0:
            raise ValueError(f'KoLeoLossDistributed: loss_group_size {size} must be a multiple '
                             f'of the per-rank batch {local_b} (model.koleo_distributed_loss_'
                             'group_size or train_dataloader.batch_size).')
        if global_b % size != 0:
            raise ValueError(f'KoLeoLossDistributed: the global batch {global_b} ({world} ranks '
                             f'x {local_b}) must be divisible by loss_group_size {size}.')
        if self.topk > size - 1:
            raise ValueError(f'KoLeoLossDistributed: topk={self.topk} needs more than '
                             f'{self.topk} rows per group; the group has {size}.')
        ranks_per_group = size // local_b
        return rank // ranks_per_group, rank % ranks_per_group, size

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """Args:
            student_output (torch.Tensor): (B, D) backbone class tokens of this rank; B must
                be the same on every rank.
            eps (float): Normalisation / distance / log epsilon. Defaults to 1e-8.
        """
        if student_output.ndim != 2 or student_output.shape[0] < 1:
            raise ValueError('KoLeoLossDistributed needs a (B, D) tensor with B >= 1, got '
                             f'shape {tuple(student_output.shape)}.')
        local_b = student_output.shape[0]
        world, rank = get_world_size(), get_rank()
        group, pos, size = self._group(local_b, world, rank)
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), p=2, dim=-1, eps=eps)
            everyone = all_gather_with_grad(x)
            members = everyone[group * size:(group + 1) * size]
            with torch.no_grad():
                dots = x @ members.t()  # (B, size)
                rows = torch.arange(local_b, device=x.device)
                dots[rows, pos * local_b + rows] = -1  # never pick oneself
                nn_idx = dots.topk(self.topk, dim=1).indices  # (B, topk)
            anchors = x.repeat_interleave(self.topk, dim=0)
            distances = F.pairwise_distance(anchors, members[nn_idx.flatten()], p=2, eps=eps)
            return -torch.log(distances + eps).mean()
