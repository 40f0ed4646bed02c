"""The optimisation step every DINO algorithm shares (one place for it).

The official loops do, per iteration: forward -> a finite check of the total loss ->
backward -> gradient clipping of each student sub-module separately (after AMP unscaling)
-> optimizer step. MMEngine's ``OptimWrapper.update_params`` has no per-module clipping and
no finite stop, so the algorithms implement the step themselves: every SSL model (through
:class:`~dino_mm.models.algorithms.base.SSLMetaArch`) and :class:`~dino_mm.models.DINOTxt`
mix this class in, and only say *which* modules are clipped (:meth:`clip_gradients`). The DDP
wrapper :class:`dino_mm.engine.model_wrappers.DINODistributedDataParallel` calls
:meth:`optimize_losses` after running the forward through DDP, so every model that mixes
this in keeps its clipping and its finite stop under DDP too.
"""
from typing import Dict

import torch
from mmengine.optim import OptimWrapper
from torch.nn.utils import clip_grad_norm_

__all__ = ['SSLOptimizationMixin', 'clip_grad_per_module', 'unscale_amp_grads']


def unscale_amp_grads(optim_wrapper: OptimWrapper) -> None:
    """Undo the AMP loss scale on the gradients (once per step) before clipping them."""
    scaler = getattr(optim_wrapper, 'loss_scaler', None)
    if scaler is not None:
        scaler.unscale_(optim_wrapper.optimizer)


def clip_grad_per_module(named_modules, max_norm: float,
                         prefix: str = '') -> Dict[str, torch.Tensor]:
    """Clip each module's gradients separately, as the official trainer clips the student
    backbone, DINO head and iBOT head one by one (not all parameters together).

    Returns the pre-clipping norms as ``{prefix}grad_norm_{name}``.
    """
    norms = {}
    for name, module in named_modules:
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            norms[f'{prefix}grad_norm_{name}'] = clip_grad_norm_(params, max_norm)
    return norms


class SSLOptimizationMixin:
    """``train_step`` / ``optimize_losses`` / ``check_clip_config`` for DINO algorithms.

    The host class is an MMEngine ``BaseModel`` with a ``clip_grad`` attribute (None or 0
    disables clipping) and a :meth:`clip_gradients` returning the pre-clipping norms.
    """

    clip_grad = None

    def clip_gradients(self, optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """Clip the student sub-modules; return ``{'grad_norm_<name>': norm}``."""
        raise NotImplementedError(f'{type(self).__name__} must define clip_gradients().')

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """Forward, finite check, backward, per-module clipping, step (official order).

        Raises:
            FloatingPointError: When the total loss is NaN or infinite; raised before the
                backward pass so the weights (and the last checkpoint) stay intact.
        """
        self.check_clip_config(optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self._run_forward(data, mode='loss')
        return self.optimize_losses(losses, optim_wrapper)

    def check_clip_config(self, optim_wrapper: OptimWrapper) -> None:
        """Refuse a second (global) clipping in the optim wrapper when the model clips."""
        if self.clip_grad and getattr(optim_wrapper, 'clip_grad_kwargs', None):
            raise ValueError(f'{type(self).__name__} clips gradients per student sub-module '
                             f'itself (clip_grad={self.clip_grad}); remove `clip_grad` from '
                             'the optim_wrapper config, or set model.clip_grad=None to use '
                             "the optim wrapper's global clipping instead.")

    def optimize_losses(self, losses: Dict[str, torch.Tensor],
                        optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """Finite check, backward, per-module clipping and step for computed ``losses``.

        Shared by :meth:`train_step` and the DDP wrapper, which runs the forward through
        DDP so that the backward pass all-reduces the gradients.

        Raises:
            FloatingPointError: When the total loss is NaN or infinite; raised before the
                backward pass so the weights (and the last checkpoint) stay intact.
        """
        parsed_loss, log_vars = self.parse_losses(losses)
        if not torch.isfinite(parsed_loss).all():
            terms = ', '.join(f'{k}={float(v.detach()):.6g}' for k, v in log_vars.items())
            raise FloatingPointError(
                f'{type(self).__name__}: the total loss is not finite ({terms}). Training '
                'stops here; resume from the last checkpoint with a lower learning rate, a '
                'higher teacher temperature warm-up or fp32, and check the input batch for '
                'NaN/Inf.')
        optim_wrapper.backward(optim_wrapper.scale_loss(parsed_loss))
        if optim_wrapper.should_update():
            log_vars.update(self.clip_gradients(optim_wrapper))
            optim_wrapper.step()
            optim_wrapper.zero_grad()
        return log_vars
