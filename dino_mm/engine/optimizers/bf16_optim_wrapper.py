"""bf16 mixed-precision training without loss scaling, on CPU as well as on GPUs.

MMEngine 0.10's :class:`~mmengine.optim.AmpOptimWrapper` asserts in ``__init__`` that a
CUDA / NPU / MLU / MUSA device is present (``'``AmpOptimizerWrapper`` is only available
training on gpu, npu, mlu or musa'``), so ``tools/train.py --amp`` stopped on a CPU-only
machine before the first iteration, although ``torch.autocast`` runs bf16 on CPU. It also
always builds a ``GradScaler``, which bf16 does not need: bf16 has the exponent range of
fp32, so small gradients do not flush to zero as fp16 ones do.

:class:`BF16OptimWrapper` is a plain :class:`~mmengine.optim.OptimWrapper` (same backward,
step, gradient accumulation and state dict) whose ``optim_context`` adds bf16 autocast
through :func:`dino_mm.utils.precision.precision_autocast`. Every training path of the
runner enters that context around the forward: MMEngine's ``BaseModel.train_step``,
``dino_mm.DINOv2`` / ``DINOv3`` / distillation ``train_step`` and
``dino_mm.DINODistributedDataParallel.train_step``. Checkpoints are those of an
``OptimWrapper`` (no ``loss_scaler`` entry), so a run can be resumed with or without it.

:func:`cpu_amp_optim_wrapper_cfg` is what ``tools/train.py --amp`` uses on CPU.
"""
import copy
import logging
from contextlib import contextmanager
from typing import Optional

import torch
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from torch import nn

from dino_mm.registry import OPTIM_WRAPPERS
from dino_mm.utils.precision import check_precision, precision_autocast, resolve_precision

__all__ = ['BF16OptimWrapper', 'cpu_amp_optim_wrapper_cfg']

# optim_wrapper types that --amp on CPU may replace (their arguments carry over).
_REPLACEABLE = ('OptimWrapper', 'AmpOptimWrapper', 'BF16OptimWrapper')


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """OptimWrapper that runs the forward under bf16 autocast, with no loss scaling.

    Parameters, gradients and optimizer states stay fp32; only the operations autocast
    lists (matrix products, convolutions, attention) compute in bf16.

    Args:
        device_type (str, optional): ``'cpu'`` or ``'cuda'``: where autocast applies.
            Defaults to None (MMEngine's :func:`~mmengine.device.get_device`, i.e. the
            device the runner puts the model on).
        **kwargs: :class:`~mmengine.optim.OptimWrapper` arguments (``optimizer``,
            ``accumulative_counts``, ``clip_grad``).
    """

    def __init__(self, device_type: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.device_type = device_type or get_device()
        # Validates the device and logs the choice; warns when the CPU emulates bf16.
        resolve_precision('bf16', self.device_type, owner='BF16OptimWrapper (AMP)')
        self.cast_dtype = torch.bfloat16  # the attribute name of MMEngine's AmpOptimWrapper

    @contextmanager
    def optim_context(self, model: nn.Module):
        """Gradient-accumulation context of :class:`OptimWrapper` plus bf16 autocast."""
        with super().optim_context(model), precision_autocast('bf16', self.device_type):
            yield


def cpu_amp_optim_wrapper_cfg(optim_wrapper: dict, where: str = 'optim_wrapper') -> dict:
    """The ``optim_wrapper`` config of a ``--amp`` run on CPU.

    ``OptimWrapper`` / ``AmpOptimWrapper`` (any scope prefix) become
    ``dino_mm.BF16OptimWrapper`` with the same optimizer, constructor, clipping and
    accumulation; AMP-only arguments (``loss_scale``, ``dtype``, ``use_fsdp``) are dropped,
    with a warning when ``dtype`` asked for something other than bf16.

    Args:
        optim_wrapper (dict): The config's ``optim_wrapper``.
        where (str): Its config key, for messages.

    Returns:
        dict: A new config dict.

    Raises:
        ValueError: For another wrapper type (an ``OptimWrapperDict`` or a custom class),
            which ``--amp`` cannot convert.
    """
    cfg = copy.deepcopy(optim_wrapper)
    wrapper_type = str(cfg.get('type', 'OptimWrapper'))
    if wrapper_type.split('.')[-1] not in _REPLACEABLE:
        raise ValueError(f'--amp on CPU turns {where}.type OptimWrapper or AmpOptimWrapper '
                         f'into dino_mm.BF16OptimWrapper (bf16 autocast); this config has '
                         f'{wrapper_type!r}. Drop --amp, or add bf16 autocast to that '
                         "wrapper's optim_context yourself.")
    cfg.pop('loss_scale', None)
    cfg.pop('use_fsdp', None)
    dtype = cfg.pop('dtype', None)
    if dtype is not None and check_precision(dtype, f'{where}.dtype') != 'bf16':
        print_log(f'--amp on CPU: {where}.dtype={dtype!r} ignored; CPU autocast runs bf16.',
                  logger='current', level=logging.WARNING)
    cfg['type'] = 'dino_mm.BF16OptimWrapper'
    return cfg
