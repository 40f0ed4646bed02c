"""Hooks for the schedules of DINO models that are not optimizer hyper-parameters.

Teacher momentum, teacher temperature and the DINOv3 loss weights are not optimizer
hyper-parameters, so MMEngine's parameter schedulers cannot drive them; these hooks evaluate
the official schedules (:class:`~dino_mm.engine.schedulers.CosineSchedule`,
:func:`~dino_mm.engine.schedulers.linear_warmup_cosine_decay`) at ``runner.iter`` (the
0-based index of the iteration being run, equal to the official ``iteration`` counter).
"""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from dino_mm.engine.schedulers import CosineSchedule, _V2Schedule, linear_warmup_cosine_decay
from dino_mm.registry import HOOKS

__all__ = ['LossWeightScheduleHook', 'TeacherMomentumHook', 'TeacherTempHook', 'unwrap_model']

DATA_BATCH = Optional[dict]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The algorithm inside a DDP / FSDP model wrapper (the model itself otherwise)."""
    return model.module if is_model_wrapper(model) else model



@HOOKS.register_module()
class TeacherMomentumHook(Hook):
    """Update the EMA teacher after every optimizer step with a cosine momentum.

    Momentum at iteration ``it`` is the official
    ``CosineScheduler(momentum_teacher, final_momentum_teacher, total_iters)[it]``
    (no warm-up), and ``model.update_teacher(momentum)`` is called in
    ``after_train_iter`` — i.e. after the optimizer step of that iteration, as in the
    official loop. The current value is also stored in ``model.momentum_teacher`` and
    logged as ``train/momentum_teacher``.

    Args:
        momentum_teacher (float): Starting momentum. Defaults to 0.992.
        final_momentum_teacher (float): Final momentum. Defaults to 1.0.
        total_iters (int, optional): Cosine length; ``runner.max_iters`` when None
            (official: ``epochs * OFFICIAL_EPOCH_LENGTH``, which equals it).
        schedule_version (str): ``'v1'`` (default): the DINOv2 cosine above. ``'v2'``: the
            DINOv3 ``schedules.momentum`` block, ``linear_warmup_cosine_decay`` from
            ``momentum_teacher`` up to ``final_momentum_teacher`` over ``warmup_iters``
            (warm-up endpoint excluded), then cosine to the same final value, i.e. constant.
        warmup_iters (int, optional): ``'v2'`` only; None means the whole run (the official
            multi-distillation recipes: a linear ramp over all iterations).
    """

    priority = 'NORMAL'

    def __init__(self,
                 momentum_teacher: float = 0.992,
                 final_momentum_teacher: float = 1.0,
                 total_iters: Optional[int] = None,
                 schedule_version: str = 'v1',
                 warmup_iters: Optional[int] = None) -> None:
        if schedule_version not in ('v1', 'v2'):
            raise ValueError(f"TeacherMomentumHook: schedule_version must be 'v1' (DINOv2 "
                             f"cosine) or 'v2' (DINOv3 linear warm-up + cosine), got "
                             f'{schedule_version!r}.')
        if warmup_iters is not None and schedule_version != 'v2':
            raise ValueError("TeacherMomentumHook: warmup_iters applies to "
                             "schedule_version='v2' only (the DINOv2 momentum has none).")
        self.momentum_teacher = momentum_teacher
        self.final_momentum_teacher = final_momentum_teacher
        self.total_iters = total_iters
        self.schedule_version = schedule_version
        self.warmup_iters = warmup_iters
        self.schedule = None

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        if not callable(getattr(model, 'update_teacher', None)):
            raise TypeError(f'TeacherMomentumHook needs the model ({type(model).__name__}) '
                            'to define update_teacher(momentum); remove the hook from '
                            'custom_hooks or use a DINO algorithm model.')
        total = self.total_iters if self.total_iters is not None else runner.max_iters
        if self.schedule_version == 'v2':
            warmup = total if self.warmup_iters is None else self.warmup_iters
            self.schedule = _V2Schedule(self.momentum_teacher, self.final_momentum_teacher,
                                        self.final_momentum_teacher, warmup, total)
        else:
            self.schedule = CosineSchedule(self.momentum_teacher,
                                           self.final_momentum_teacher, total)

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        if self.schedule is None:
            self.before_train(runner)
        momentum = self.schedule(runner.iter)
        model = unwrap_model(runner.model)
        model.update_teacher(momentum)
        model.momentum_teacher = momentum
        runner.message_hub.update_scalar('train/momentum_teacher', momentum)


@HOOKS.register_module()
class TeacherTempHook(Hook):
    """Set ``model.teacher_temp`` before every training iteration.

    Official schedule: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_iters`` (``np.linspace`` including the endpoint), then constant
    ``teacher_temp``.

    Args:
        warmup_teacher_temp (float): Starting temperature. Defaults to 0.04.
        teacher_temp (float): Temperature after the warm-up. Defaults to 0.07.
        warmup_iters (int): Warm-up length in iterations (official:
            ``warmup_teacher_temp_epochs * OFFICIAL_EPOCH_LENGTH``, 30 x 1250).
            Defaults to 37500.
    """

    priority = 'NORMAL'

    def __init__(self,
                 warmup_teacher_temp: float = 0.04,
                 teacher_temp: float = 0.07,
                 warmup_iters: int = 37500) -> None:
        self.schedule = CosineSchedule(teacher_temp, teacher_temp, total_iters=warmup_iters,
                                       warmup_iters=warmup_iters,
                                       start_warmup_value=warmup_teacher_temp)

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        temp = self.schedule(runner.iter)
        unwrap_model(runner.model).teacher_temp = temp
        runner.message_hub.update_scalar('train/teacher_temp', temp)


@HOOKS.register_module()
class LossWeightScheduleHook(Hook):
    """Set ``model.<attr>`` before every iteration from ``linear_warmup_cosine_decay``.

    Official uses: ``gram.loss_weight_schedule`` (``attr='gram_loss_weight'``) and
    ``dino.local_loss_weight_schedule`` with ``reweight_dino_local_loss``
    (``attr='local_loss_weight'``). The value is logged as ``train/<attr>``.

    Args:
        attr (str): Model attribute to set.
        start (float): Warm-up start value.
        peak (float): Value after the warm-up.
        end (float): Final value.
        warmup_iters (int): Warm-up length.
        cosine_iters (int, optional): Cosine length; ``runner.max_iters - warmup_iters``
            when None.
        begin_iter (int): Iterations before this keep ``start`` and the schedule is
            shifted to begin here. Defaults to 0.
    """

    priority = 'NORMAL'

    def __init__(self,
                 attr: str,
                 start: float,
                 peak: float,
                 end: float,
                 warmup_iters: int = 0,
                 cosine_iters: Optional[int] = None,
                 begin_iter: int = 0) -> None:
        self.attr = attr
        self.start, self.peak, self.end = float(start), float(peak), float(end)
        self.warmup_iters = int(warmup_iters)
        self.cosine_iters = cosine_iters
        self.begin_iter = int(begin_iter)

    def value(self, it: int, max_iters: Optional[int] = None) -> float:
        """Schedule value at 0-based iteration ``it``."""
        if it < self.begin_iter:
            return self.start
        total = None if max_iters is None else max_iters - self.begin_iter
        return linear_warmup_cosine_decay(it - self.begin_iter, self.start, self.peak,
                                          self.end, self.warmup_iters, self.cosine_iters,
                                          total)

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        if not hasattr(model, self.attr):
            raise AttributeError(f'LossWeightScheduleHook: the model ({type(model).__name__}) '
                                 f'has no attribute {self.attr!r}; use gram_loss_weight or '
                                 'local_loss_weight with a dino_mm.DINOv3 model.')

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        value = self.value(runner.iter, runner.max_iters)
        setattr(unwrap_model(runner.model), self.attr, value)
        runner.message_hub.update_scalar(f'train/{self.attr}', value)
