"""Hooks of the DINOv3 stages: Gram-teacher refresh, loss-weight schedules, stage checks.

* :class:`GramTeacherRefreshHook` copies the EMA teacher into the frozen Gram teacher on
  the official schedule (docs/reference.md §4.2) and records every refresh.
* :class:`LossWeightScheduleHook` drives a loss weight (``gram_loss_weight``,
  ``local_loss_weight``) with the DINOv3 ``linear_warmup_cosine_decay`` schedule.
* :class:`StageCheckpointHook` checks, before anything is initialised or loaded, that
  ``load_from`` (the previous stage's checkpoint) exists and fits the model, and can start
  the student from the loaded teacher (official ``student.resume_from_teacher_chkpt``).
"""
from typing import Optional, Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from dino_mm.engine.schedulers import linear_warmup_cosine_decay
from dino_mm.registry import HOOKS

__all__ = [
    'GramTeacherRefreshHook', 'LossWeightScheduleHook', 'StageCheckpointHook',
    'linear_warmup_cosine_decay'
]

DATA_BATCH = Optional[dict]
REFRESH_INFO_KEY = 'gram_teacher_refresh_iters'


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class GramTeacherRefreshHook(Hook):
    """Copy the EMA teacher into the Gram teacher on the official schedule.

    After training iteration ``it`` (after the EMA update of the
    :class:`TeacherMomentumHook`, hence the lower priority), the Gram teacher is refreshed
    when ``(it + 1) >= it_first_update`` and ``(it + 1) % update_frequency == 0``, at most
    ``max_updates`` times (official ``gram.rep_update``). The number of refreshes already
    done is derived from the iteration, so resuming needs no extra state. Each refresh is
    logged with ``runner.logger.info`` and appended to the message-hub runtime info
    ``'gram_teacher_refresh_iters'`` (1-based iteration numbers, i.e. ``it + 1``).

    ``it_load_ema_teacher`` (official ``gram.it_load_ema_teacher``) copies the EMA
    teacher once *before* that iteration, for runs whose Gram teacher is not loaded from
    ``gram_ckpt``.

    Args:
        it_first_update (int): First iteration number (1-based) that may refresh.
        update_frequency (int): Refresh period in iterations.
        max_updates (int, optional): At most this many refreshes; None = unlimited.
        rep_update (bool): Official switch; False keeps the Gram teacher fixed.
            Defaults to True.
        it_load_ema_teacher (int): 0-based iteration before which the EMA teacher is
            copied once; -1 disables. Defaults to -1.
    """

    priority = 'LOW'

    def __init__(self,
                 it_first_update: int,
                 update_frequency: int,
                 max_updates: Optional[int] = None,
                 rep_update: bool = True,
                 it_load_ema_teacher: int = -1) -> None:
        if update_frequency <= 0:
            raise ValueError('GramTeacherRefreshHook: update_frequency must be positive, got '
                             f'{update_frequency}.')
        self.it_first_update = int(it_first_update)
        self.update_frequency = int(update_frequency)
        self.max_updates = max_updates
        self.rep_update = rep_update
        self.it_load_ema_teacher = int(it_load_ema_teacher)

    def _check(self, runner) -> nn.Module:
        model = _unwrap(runner.model)
        if not getattr(model, 'use_gram', False) or not callable(
                getattr(model, 'refresh_gram_teacher', None)):
            raise TypeError(f'GramTeacherRefreshHook needs a model with a Gram teacher '
                            f'({type(model).__name__} has none); set model.gram_loss (e.g. '
                            "dict(type='dino_mm.GramLoss', remove_neg=False)) or remove the "
                            'hook.')
        return model

    def before_train(self, runner) -> None:
        self._check(runner)

    def _n_done(self, step: int) -> int:
        """Refreshes performed up to and including 1-based iteration ``step``."""
        first = max(self.it_first_update, 1)
        if step < first:
            return 0
        f = self.update_frequency
        count = step // f - (first - 1) // f
        return count if self.max_updates is None else min(count, self.max_updates)

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        if runner.iter == self.it_load_ema_teacher:
            self._check(runner).refresh_gram_teacher()
            runner.logger.info(f'Gram teacher loaded from the EMA teacher before iteration '
                               f'{runner.iter + 1}.')

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        if not self.rep_update:
            return
        step = runner.iter + 1
        if step < self.it_first_update or step % self.update_frequency:
            return
        n_done = self._n_done(step)
        if self.max_updates is not None and self._n_done(step - 1) >= self.max_updates:
            return
        self._check(runner).refresh_gram_teacher()
        history = list(runner.message_hub.get_info(REFRESH_INFO_KEY) or [])
        history.append(step)
        runner.message_hub.update_info(REFRESH_INFO_KEY, history)
        runner.message_hub.update_scalar('train/gram_teacher_updates', n_done)
        limit = '' if self.max_updates is None else f'/{self.max_updates}'
        runner.logger.info(f'Gram teacher refreshed from the EMA teacher at iteration {step} '
                           f'(update {n_done}{limit}).')


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
        model = _unwrap(runner.model)
        if not hasattr(model, self.attr):
            raise AttributeError(f'LossWeightScheduleHook: the model ({type(model).__name__}) '
                                 f'has no attribute {self.attr!r}; use gram_loss_weight or '
                                 'local_loss_weight with a dino_mm.DINOv3 model.')

    def before_train_iter(self, runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        value = self.value(runner.iter, runner.max_iters)
        setattr(_unwrap(runner.model), self.attr, value)
        runner.message_hub.update_scalar(f'train/{self.attr}', value)


@HOOKS.register_module()
class StageCheckpointHook(Hook):
    """Validate the previous stage's checkpoint before training; optionally re-seed the student.

    In ``before_run`` (MMEngine calls it before weight init and ``load_from``), unless the
    run resumes: ``load_from`` must be set (when ``require_load_from``), exist, and hold
    every model key except those under ``allow_missing`` with the same shapes. A mismatch
    raises ``ValueError`` naming the file and listing a few keys with both shapes.

    With ``student_from_teacher`` the student is overwritten with the loaded teacher at the
    start of a fresh run (official ``student.resume_from_teacher_chkpt``, stage 3).

    Args:
        require_load_from (bool): Fail when ``load_from`` is not set. Defaults to True.
        allow_missing (Sequence[str]): Model key prefixes the checkpoint may lack.
            Defaults to ``('gram_teacher.', )`` (stage 1 has no Gram teacher).
        student_from_teacher (bool): Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 require_load_from: bool = True,
                 allow_missing: Sequence[str] = ('gram_teacher.', ),
                 student_from_teacher: bool = False) -> None:
        self.require_load_from = require_load_from
        self.allow_missing = tuple(allow_missing)
        self.student_from_teacher = student_from_teacher

    def before_run(self, runner) -> None:
        from dino_mm.models.algorithms.dinov3 import check_checkpoint_compatibility
        if getattr(runner, '_resume', False):
            return
        path = getattr(runner, '_load_from', None)
        if not path:
            if self.require_load_from:
                raise ValueError(
                    f'StageCheckpointHook: this stage ({runner.experiment_name}) continues a '
                    'previous stage but `load_from` is not set; set load_from to the previous '
                    "stage's checkpoint (e.g. --cfg-options load_from=work_dirs/<stage>/"
                    'iter_<N>.pth).')
            return
        model = _unwrap(runner.model)
        check_checkpoint_compatibility(path, model.state_dict(), 'load_from',
                                       ignore_missing=self.allow_missing)
        runner.logger.info(f'StageCheckpointHook: load_from "{path}" matches the model.')

    def before_train(self, runner) -> None:
        if not self.student_from_teacher or runner.iter != 0:
            return
        model = _unwrap(runner.model)
        for key in model.student:
            model.student[key].load_state_dict(model.teacher[key].state_dict(), strict=True)
        runner.logger.info('StageCheckpointHook: student initialised from the loaded teacher.')
