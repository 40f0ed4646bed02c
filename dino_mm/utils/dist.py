"""Collective helpers that degrade to no-ops in a single process.

The SSL losses reduce statistics across ranks (teacher centers, Sinkhorn-Knopp sums). They must
also run in a plain single-process script or a unit test, where no process group exists, so
every helper here checks for an initialised default group first.
"""
from typing import Optional

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """Whether a default process group is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size(group: Optional[dist.ProcessGroup] = None) -> int:
    """Number of ranks in ``group`` (None: the default group), 1 without a process group."""
    return dist.get_world_size(group) if is_dist() else 1


def get_rank(group: Optional[dist.ProcessGroup] = None) -> int:
    """Rank in ``group`` (None: the default group), 0 without a process group."""
    return dist.get_rank(group) if is_dist() else 0


def all_reduce(tensor: torch.Tensor,
               async_op: bool = False,
               group: Optional[dist.ProcessGroup] = None) -> Optional[dist.Work]:
    """Sum ``tensor`` in place over the ranks of ``group`` (None: all ranks).

    Args:
        tensor (torch.Tensor): Tensor reduced in place.
        async_op (bool): Return the work handle instead of waiting. Defaults to False.
        group (ProcessGroup, optional): A subgroup (e.g. one student's ranks in
            rank-partitioned multi-distillation). Defaults to the default group.

    Returns:
        Optional[dist.Work]: The handle when ``async_op`` is set and a process group
        exists, otherwise None (the tensor is then already final).
    """
    if not is_dist():
        return None
    handle = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=async_op)
    return handle if async_op else None


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along ``dim``, in rank order (no autograd).

    All ranks must pass tensors of the same shape. Without a process group the tensor itself
    is returned.
    """
    if not is_dist():
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=dim)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` of every rank along dim 0, keeping the autograd graph.

    The backward pass sums, over ranks, the gradients that reach each rank's slice (a
    reduce-scatter), so a rank's input receives the gradient of every rank's loss with
    respect to it. All ranks must pass tensors of the same shape. Without a process group
    the tensor itself is returned.

    Args:
        tensor (torch.Tensor): (B, ...) local tensor.

    Returns:
        torch.Tensor: (world_size * B, ...), rank order.
    """
    if not is_dist():
        return tensor
    # The autograd-aware functional collective (reduce-scatter backward); it runs on gloo
    # and NCCL alike and replaces the deprecated torch.distributed.nn.functional.all_gather.
    from torch.distributed._functional_collectives import all_gather_single_autograd
    return all_gather_single_autograd(tensor.contiguous(), 0, dist.group.WORLD)
