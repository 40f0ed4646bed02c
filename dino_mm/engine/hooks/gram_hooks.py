"""Gram anchoring (DINOv3): :class:`GramTeacherRefreshHook` copies the EMA teacher into the
frozen Gram teacher on the official schedule (docs/reference.md §4.2) and records every
refresh."""
from typing import Optional

from mmengine.hooks import Hook
from torch import nn

from dino_mm.registry import HOOKS
from .teacher_hooks import DATA_BATCH, unwrap_model as _unwrap

__all__ = ['GramTeacherRefreshHook']

REFRESH_INFO_KEY = 'gram_teacher_refresh_iters'


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
