"""DDP wrapper that keeps the DINO algorithms' own optimisation step.

MMEngine's :class:`~mmengine.model.MMDistributedDataParallel.train_step` runs
``optim_wrapper.update_params(loss)`` itself, which silently skips what
:meth:`dino_mm.DINOv2.train_step` adds on top: gradient clipping per student sub-module
(official ``clip_grad_norm_`` on backbone / dino_head / ibot_head separately, after AMP
unscaling) and the stop on a non-finite loss. Calling the module's ``train_step`` directly
would bypass DDP's forward and thus its gradient all-reduce, so this wrapper runs the forward
through DDP and hands the losses to the module.
"""
from typing import Dict

import torch
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapper

from dino_mm.registry import MODEL_WRAPPERS

__all__ = ['DINODistributedDataParallel', 'ensure_dino_ddp_wrapper']


@MODEL_WRAPPERS.register_module()
class DINODistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` whose ``train_step`` reuses the model's step logic.

    The wrapped module must provide ``optimize_losses(losses, optim_wrapper)`` (finite
    check, backward, clipping, step), as :class:`dino_mm.DINOv2` / ``DINOv3`` do, and may
    provide ``check_clip_config(optim_wrapper)``. Other models fall back to MMEngine's
    behaviour.

    Use it in a config with ``model_wrapper_cfg = dict(type='dino_mm.DINODistributedDataParallel',
    broadcast_buffers=False, find_unused_parameters=False)``; the teacher has no trainable
    parameters, so DDP ignores it, and the loss centers are all-reduced by the losses
    themselves (no buffer broadcast needed).

    A module with a ``ddp_process_group`` attribute that is not None (rank-partitioned
    :class:`dino_mm.MultiDistillation`: each rank holds one student) has its gradients
    reduced in that group only, unless ``process_group`` is passed.

    Args:
        module (nn.Module): The model to wrap.
        **kwargs: :class:`torch.nn.parallel.DistributedDataParallel` arguments
            (``device_ids=None`` on CPU, as ``tools/train.py`` sets for gloo).
    """

    def __init__(self, module, **kwargs) -> None:
        group = getattr(module, 'ddp_process_group', None)
        if group is not None and kwargs.get('process_group') is None:
            kwargs['process_group'] = group
        super().__init__(module=module, **kwargs)

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """DDP forward (gradients all-reduced in backward), then the module's own update.

        Args:
            data (dict): A batch from the dataloader.
            optim_wrapper (OptimWrapper): The optimizer wrapper.

        Returns:
            dict: Logged scalars (losses and per-module gradient norms).
        """
        module = self.module
        optimize = getattr(module, 'optimize_losses', None)
        if not callable(optimize):
            return super().train_step(data, optim_wrapper)
        check = getattr(module, 'check_clip_config', None)
        if callable(check):
            check(optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = module.data_preprocessor(data, training=True)
            losses = self._run_forward(data, mode='loss')
        return optimize(losses, optim_wrapper)


def ensure_dino_ddp_wrapper(cfg) -> bool:
    """Default ``model_wrapper_cfg`` to this wrapper for a launched DINO algorithm.

    Without ``model_wrapper_cfg`` MMEngine wraps a launched model in its own
    ``MMDistributedDataParallel``, whose ``train_step`` never calls the model's step: the
    per-module clipping and the finite-loss stop of every DINO algorithm (and of any model
    with an ``optimize_losses`` method) would silently be lost. ``tools/train.py`` calls
    this for ``--launcher pytorch|slurm|mpi``; a config that sets ``model_wrapper_cfg``
    (even to None, as the FSDP configs do) is left alone.

    Returns:
        bool: Whether the config was changed.
    """
    if cfg.get('launcher', 'none') == 'none' or 'model_wrapper_cfg' in cfg:
        return False
    model = cfg.get('model', None)
    if not isinstance(model, dict):
        return False
    # the same type lookup the --cfg-options checks use (every registry, the config's scope)
    from dino_mm.engine.config_checks import resolve_type
    classes = resolve_type(model.get('type', None), cfg.get('default_scope', None))
    if not any(callable(getattr(c, 'optimize_losses', None)) for c in classes):
        return False
    cfg.model_wrapper_cfg = dict(
        type='dino_mm.DINODistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=bool(cfg.get('find_unused_parameters', False)))
    return True
