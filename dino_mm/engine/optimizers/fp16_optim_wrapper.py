"""fp16 training with a (sharded) gradient scaler: the official DINOv2 FSDP precision.

The official DINOv2 trainer computes in fp16 through FSDP's mixed precision (fp16
parameters and gradient reductions, fp32 sharded master weights) and scales the loss with
``ShardedGradScaler``: fp16 has a 5-bit exponent, so small gradients flush to zero
without scaling, and a step whose gradients overflowed on *any* rank has to be skipped on
*every* rank (each rank only sees its own gradient shard, so the finite check is
all-reduced).

MMEngine's :class:`~mmengine.optim.AmpOptimWrapper` has the scaler logic (``use_fsdp=True``
builds a ``ShardedGradScaler``) but asserts in ``__init__`` that a CUDA / NPU / MLU / MUSA
device exists, and wraps the forward in ``torch.autocast``, which the official recipe does
not do (FSDP casts the parameters; autocast on top would change which operations run in
fp16). :class:`FP16OptimWrapper` keeps its ``backward`` (scaled loss), ``step`` (unscale,
skip on inf/NaN, update the scale) and state dict (``loss_scaler`` entry), builds the
scaler for the device the runner uses (CPU or CUDA) and adds no autocast.

Use it with :class:`dino_mm.DINOFSDPStrategy` and ``mixed_precision='fp16'`` (see
``configs/_base_/schedules/dinov2_pretrain_fsdp.py``). The DINO algorithms unscale the
gradients before their per-module clipping (:func:`dino_mm.models.algorithms.optimization.
unscale_amp_grads`), so clipping sees true gradient norms.
"""
import logging
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.distributed as dist
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import nn

from dino_mm.registry import OPTIM_WRAPPERS

__all__ = ['FP16OptimWrapper']


@OPTIM_WRAPPERS.register_module()
class FP16OptimWrapper(AmpOptimWrapper):
    """Dynamic (or static) loss scaling for fp16 FSDP training, on CPU and GPUs.

    In a distributed run the scaler is ``torch.distributed.fsdp.ShardedGradScaler``: the
    inf/NaN flag of the local gradient shards is all-reduced, so every rank skips the same
    steps and the scale stays identical across ranks. In one process it is
    ``torch.amp.GradScaler``.

    Args:
        loss_scale (str | float | dict): ``'dynamic'`` (start at 2**16, halve on overflow,
            double after 2000 clean steps: the scaler defaults, as in the official code), a
            float for a static scale, or a dict of scaler arguments (``init_scale``,
            ``growth_interval`` ...). Defaults to ``'dynamic'``.
        device_type (str, optional): ``'cpu'`` or ``'cuda'``. Defaults to None (MMEngine's
            :func:`~mmengine.device.get_device`).
        process_group (ProcessGroup, optional): Ranks whose finite checks are combined.
            Defaults to None (the whole world).
        **kwargs: :class:`~mmengine.optim.OptimWrapper` arguments (``optimizer``,
            ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 device_type: Optional[str] = None,
                 process_group=None,
                 **kwargs) -> None:
        # Skips AmpOptimWrapper.__init__ (its device assertion and autocast dtype).
        OptimWrapper.__init__(self, **kwargs)
        self.device_type = (device_type or get_device()).split(':')[0]
        if self.device_type not in ('cpu', 'cuda'):
            raise ValueError(f'FP16OptimWrapper: device_type={self.device_type!r}; the '
                             "gradient scaler runs on 'cpu' or 'cuda'.")
        self._scale_update_param = None
        if loss_scale == 'dynamic':
            scaler_kwargs = {}
        elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
            self._scale_update_param = float(loss_scale)
            scaler_kwargs = dict(init_scale=float(loss_scale))
        elif isinstance(loss_scale, dict):
            scaler_kwargs = dict(loss_scale)
        else:
            raise TypeError(f"FP16OptimWrapper: loss_scale must be 'dynamic', a float or a "
                            f'dict of GradScaler arguments, got {loss_scale!r}.')
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(
                process_group) > 1:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            self.loss_scaler = ShardedGradScaler(
                self.device_type, process_group=process_group or dist.group.WORLD,
                **scaler_kwargs)
        else:
            self.loss_scaler = torch.amp.GradScaler(self.device_type, **scaler_kwargs)
        self.cast_dtype = torch.float16
        print_log(f'FP16OptimWrapper: {type(self.loss_scaler).__name__} on '
                  f'{self.device_type}, initial scale {self.loss_scaler.get_scale():g}',
                  logger='current', level=logging.INFO)

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Gradient-accumulation context only: FSDP's ``param_dtype`` sets the precision."""
        with OptimWrapper.optim_context(self, model):
            yield

    def step(self, **kwargs) -> None:
        """Unscale (once), clip if configured, step unless a gradient is inf/NaN, update
        the scale. Logs a skipped step."""
        scale = self.loss_scaler.get_scale()
        super().step(**kwargs)
        new_scale = self.loss_scaler.get_scale()
        self.skipped_last_step = new_scale < scale
        if self.skipped_last_step:
            print_log(f'FP16OptimWrapper: inf/NaN gradients, step skipped; loss scale '
                      f'{scale:g} -> {new_scale:g}', logger='current', level=logging.WARNING)
