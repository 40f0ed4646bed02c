"""Per-iteration schedules of the official DINOv2 / DINOv3 recipes.

The official training loops index pre-computed numpy arrays with the global iteration
number. Here the same values are produced in closed form by :class:`CosineSchedule`
(so a 1.2M-iteration schedule costs nothing to build) and applied through

* :class:`DINOCosineParamScheduler` — an MMEngine parameter scheduler for ``lr`` and
  ``weight_decay`` that honours the per-group ``lr_mult`` / ``wd_mult`` /
  ``is_last_layer`` keys written by
  :class:`~dino_mm.engine.optimizers.LayerDecayOptimWrapperConstructor`;
* the teacher hooks in :mod:`dino_mm.engine.hooks` (momentum and temperature are not
  optimizer hyper-parameters, so they cannot be parameter schedulers).

Iteration semantics (identical to the official loop): the value used *during* training
iteration ``it`` (0-based, ``runner.iter`` inside the hooks) is ``schedule[it]``.
MMEngine builds a parameter scheduler by calling ``step()`` once (``last_step`` 0) and
steps it after every iteration, so ``last_step == it`` when iteration ``it`` runs.
"""
import inspect
import logging
import math
from typing import Iterable, List, Mapping, Optional

from mmengine.dist import get_world_size
from mmengine.logging import print_log
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from torch.optim import Optimizer

from dino_mm.registry import PARAM_SCHEDULERS

__all__ = [
    'CosineSchedule', 'linear_warmup_cosine_decay', 'scale_lr', 'DINOCosineParamScheduler',
    'SCALING_RULES', 'fit_schedules_to_run'
]


class CosineSchedule:
    """The official ``CosineScheduler`` as a pure function of the iteration.

    Layout over ``[0, total_iters)``: ``freeze_iters`` zeros, then ``warmup_iters``
    values of ``np.linspace(start_warmup_value, base_value, warmup_iters)`` (the
    endpoint **is** included, so the last warm-up iteration already equals
    ``base_value``), then a half cosine from ``base_value`` to ``final_value`` over the
    remaining ``n = total - warmup - freeze`` iterations, evaluated at ``j / n`` for
    ``j = 0 .. n-1`` (so ``final_value`` itself is never reached inside the range).
    From ``total_iters`` on, ``final_value`` is returned.

    ``zero_until`` reproduces how the official code freezes the DINO head's last
    layer: it copies the lr schedule and overwrites its first entries with 0.

    Args:
        base_value (float): Value at the end of the warm-up / start of the cosine.
        final_value (float): Value the cosine decays to; returned after the end.
        total_iters (int): Length of the schedule in iterations.
        warmup_iters (int): Linear warm-up length. Defaults to 0.
        start_warmup_value (float): First warm-up value. Defaults to 0.
        freeze_iters (int): Leading iterations at exactly 0. Defaults to 0.
        zero_until (int): Iterations ``< zero_until`` (and ``< total_iters``) return 0.
            Defaults to 0.
    """

    def __init__(self,
                 base_value: float,
                 final_value: float,
                 total_iters: int,
                 warmup_iters: int = 0,
                 start_warmup_value: float = 0.,
                 freeze_iters: int = 0,
                 zero_until: int = 0) -> None:
        total_iters, warmup_iters, freeze_iters = int(total_iters), int(warmup_iters), int(
            freeze_iters)
        if min(total_iters, warmup_iters, freeze_iters, int(zero_until)) < 0:
            raise ValueError('CosineSchedule: iteration counts must be >= 0, got '
                             f'total_iters={total_iters}, warmup_iters={warmup_iters}, '
                             f'freeze_iters={freeze_iters}, zero_until={zero_until}.')
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f'CosineSchedule: warmup_iters ({warmup_iters}) + freeze_iters '
                f'({freeze_iters}) exceed total_iters ({total_iters}); the official '
                'scheduler fails on this too. Lengthen training or shorten the warm-up.')
        self.base_value = float(base_value)
        self.final_value = float(final_value)
        self.total_iters = total_iters
        self.warmup_iters = warmup_iters
        self.start_warmup_value = float(start_warmup_value)
        self.freeze_iters = freeze_iters
        self.zero_until = int(zero_until)

    def __call__(self, it: int) -> float:
        if it < 0:
            raise ValueError(f'CosineSchedule: iteration must be >= 0, got {it}.')
        if it >= self.total_iters:
            return self.final_value
        if it < self.zero_until or it < self.freeze_iters:
            return 0.
        it -= self.freeze_iters
        if it < self.warmup_iters:
            if self.warmup_iters == 1:  # np.linspace(a, b, 1) == [a]
                return self.start_warmup_value
            step = (self.base_value - self.start_warmup_value) / (self.warmup_iters - 1)
            if it == self.warmup_iters - 1:  # linspace pins the endpoint exactly
                return self.base_value
            return self.start_warmup_value + it * step
        it -= self.warmup_iters
        n = self.total_iters - self.warmup_iters - self.freeze_iters
        return self.final_value + 0.5 * (self.base_value - self.final_value) * (
            1 + math.cos(math.pi * it / n))

    __getitem__ = __call__

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(base_value={self.base_value}, '
                f'final_value={self.final_value}, total_iters={self.total_iters}, '
                f'warmup_iters={self.warmup_iters}, '
                f'start_warmup_value={self.start_warmup_value}, '
                f'freeze_iters={self.freeze_iters}, zero_until={self.zero_until})')


def linear_warmup_cosine_decay(it: int, start: float, peak: float, end: float,
                               warmup_iters: int, cosine_iters: Optional[int] = None,
                               total_iters: Optional[int] = None) -> float:
    """Value at iteration ``it`` of DINOv3's ``linear_warmup_cosine_decay`` schedule.

    Linear ``start -> peak`` over ``warmup_iters`` (endpoint excluded, unlike the DINOv2
    ``CosineScheduler``), then half cosine ``peak -> end`` over ``cosine_iters``
    (``total_iters - warmup_iters`` when not given), then constant ``end``.

    Args:
        it (int): 0-based iteration.
        start (float): First warm-up value.
        peak (float): Value at the end of the warm-up.
        end (float): Final value.
        warmup_iters (int): Warm-up length.
        cosine_iters (int, optional): Cosine length.
        total_iters (int, optional): Used for ``cosine_iters`` when that is None.
    """
    if it < 0:
        raise ValueError(f'linear_warmup_cosine_decay: iteration must be >= 0, got {it}.')
    if cosine_iters is None:
        if total_iters is None:
            raise ValueError('linear_warmup_cosine_decay needs cosine_iters or total_iters.')
        cosine_iters = total_iters - warmup_iters
    if it < warmup_iters:
        return start + (peak - start) * it / warmup_iters
    it -= warmup_iters
    if it < cosine_iters:
        return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * it / cosine_iters))
    return end


class _V2Schedule:
    """DINOv3 ``linear_warmup_cosine_decay`` as a callable, with the last-layer freeze."""

    def __init__(self, start: float, peak: float, end: float, warmup_iters: int,
                 total_iters: int, zero_until: int = 0) -> None:
        if int(warmup_iters) > int(total_iters):
            raise ValueError(f'schedule v2: warmup_iters ({warmup_iters}) exceed total_iters '
                             f'({total_iters}); lengthen training or shorten the warm-up.')
        self.start, self.peak, self.end = float(start), float(peak), float(end)
        self.warmup_iters, self.total_iters = int(warmup_iters), int(total_iters)
        self.zero_until = int(zero_until)

    def __call__(self, it: int) -> float:
        if it < self.zero_until:  # the official code zeroes the copy's first entries
            return 0.
        return linear_warmup_cosine_decay(it, self.start, self.peak, self.end,
                                          self.warmup_iters, total_iters=self.total_iters)


#: Official learning-rate scaling rules. ``B`` is the total batch (per GPU x GPUs).
SCALING_RULES = {
    # DINOv2 ``sqrt_wrt_1024``: base lr is given for a batch of 1024.
    'sqrt_wrt_1024': lambda lr, b: lr * math.sqrt(b / 1024.),
    # DINOv3 ``sqrt_wrt_1024`` carries an extra x4 (its ``optim.lr`` is for 256).
    'sqrt_wrt_1024_v3': lambda lr, b: lr * 4. * math.sqrt(b / 1024.),
    'linear_wrt_256': lambda lr, b: lr * b / 256.,
}


def scale_lr(base_lr: float,
             scaling_rule: Optional[str],
             batch_size_per_gpu: int,
             world_size: Optional[int] = None) -> float:
    """Apply an official lr scaling rule.

    Args:
        base_lr (float): Learning rate from the config.
        scaling_rule (str, optional): One of ``'sqrt_wrt_1024'`` (DINOv2),
            ``'sqrt_wrt_1024_v3'`` (DINOv3's rule of the same name, with its x4),
            ``'linear_wrt_256'`` (DINOv3), or None for no scaling.
        batch_size_per_gpu (int): Per-process batch size.
        world_size (int, optional): Number of processes; read from
            ``mmengine.dist.get_world_size()`` when None.

    Returns:
        float: The scaled learning rate.
    """
    if scaling_rule is None:
        return float(base_lr)
    if scaling_rule not in SCALING_RULES:
        raise ValueError(f'Unknown lr scaling_rule {scaling_rule!r}; choose one of '
                         f'{sorted(SCALING_RULES)} or None.')
    if world_size is None:
        world_size = get_world_size()
    return SCALING_RULES[scaling_rule](float(base_lr), int(batch_size_per_gpu) * world_size)


def _warn_if_overriding(optimizer, param_name: str, schedule_values, base_value: float,
                        final_value: float) -> None:
    """Warn when the optimizer was given an explicit ``param_name`` the schedule replaces.

    The scheduler sets every group's value from the first iteration on, so an optimizer
    value (``optim_wrapper.optimizer.lr=...``) that is not one the schedule takes is
    silently dead. Values equal to the optimizer class's own default count as not set.
    """
    opt = getattr(optimizer, 'optimizer', optimizer)  # OptimWrapper or torch optimizer
    defaults = getattr(opt, 'defaults', None) or {}
    if param_name not in defaults:
        return
    value = defaults[param_name]
    try:
        value = float(value)
    except (TypeError, ValueError):
        return
    try:
        implicit = inspect.signature(type(opt).__init__).parameters[param_name].default
    except (KeyError, TypeError, ValueError):
        implicit = inspect.Parameter.empty
    if implicit is not inspect.Parameter.empty and isinstance(implicit, (int, float)) \
            and math.isclose(value, float(implicit), rel_tol=1e-9, abs_tol=0.0):
        return
    if any(math.isclose(value, float(v), rel_tol=1e-6, abs_tol=1e-12) for v in schedule_values):
        return
    print_log(
        f'DINOCosineParamScheduler(param_name={param_name!r}) overrides the optimizer\'s '
        f'{param_name}={value:g} (optim_wrapper.optimizer.{param_name}): every param group '
        f'follows the schedule instead (base_value={base_value:g}, final_value='
        f'{final_value:g}), so that value is never used. To change the {param_name}, set '
        f'param_scheduler[...].base_value / final_value of this scheduler; set the '
        f'optimizer\'s {param_name} to the base_value to silence this warning.',
        logger='current', level=logging.WARNING)


@PARAM_SCHEDULERS.register_module()
class DINOCosineParamScheduler(_ParamScheduler):
    """Official DINO lr / weight-decay schedule as an MMEngine parameter scheduler.

    For ``param_name='lr'`` every optimizer group gets
    ``schedule(it) * group['lr_mult']``, except groups with ``group['is_last_layer']``
    which get 0 while ``it < freeze_last_layer_iters`` (the official "last layer lr"
    schedule). For ``param_name='weight_decay'`` every group gets
    ``schedule(it) * group['wd_mult']``. Missing keys default to ``lr_mult=1``,
    ``wd_mult=1``, ``is_last_layer=False``, so the scheduler also works with
    MMEngine's default constructor.

    The scheduler always steps per iteration (``by_epoch=False``); give lengths in
    iterations (official: ``epochs * OFFICIAL_EPOCH_LENGTH``).

    Args:
        optimizer (Optimizer | OptimWrapper): Wrapped optimizer.
        param_name (str): ``'lr'`` or ``'weight_decay'``.
        base_value (float): Peak value (lr before scaling, or starting wd).
        final_value (float): Final value (``min_lr`` or ``weight_decay_end``).
        total_iters (int): Schedule length in iterations.
        warmup_iters (int): Linear warm-up length. Defaults to 0.
        start_warmup_value (float): First warm-up value. Defaults to 0.
        freeze_iters (int): Leading iterations at value 0 for every group.
            Defaults to 0.
        freeze_last_layer_iters (int): Iterations during which ``is_last_layer``
            groups get lr 0 (only for ``'lr'``). Defaults to 0.
        scaling_rule (str, optional): If set, ``base_value`` is scaled with
            :func:`scale_lr`; ``final_value`` too for ``schedule_version='v2'``.
        batch_size_per_gpu (int, optional): Needed when ``scaling_rule`` is set. The
            training tools set it to the run's ``train_dataloader.batch_size`` (see
            :func:`fit_schedules_to_run`), and the world size is read when the scheduler
            is built, so a resumed run on another number of ranks follows the new size.
        schedule_version (str): Which official schedule family the values follow.
            ``'v1'`` (default): DINOv2's ``CosineScheduler`` (warm-up ``np.linspace``
            *including* its endpoint; the scaling rule applies to ``base_value`` only,
            ``min_lr`` is not scaled). ``'v2'``: the DINOv3 ``schedules:`` block
            (``linear_warmup_cosine_decay``: warm-up endpoint excluded, cosine from the
            peak (``base_value``) to ``end`` (``final_value``) over
            ``total_iters - warmup_iters``, then constant ``end``; the scaling rule
            multiplies **both** peak and end, as the official ``build_schedulers_v2``
            does). ``freeze_iters`` must be 0 for ``'v2'``.
        begin (int): Accepted for config compatibility; must be 0 (the schedule is a
            function of the absolute iteration, as in the official loop).
        end (int): Ignored. MMEngine's runner fills ``end`` with ``max_epochs`` when a
            scheduler dict has no ``by_epoch=False``, which would silently stop the
            schedule after one iteration; the official schedule instead runs for the
            whole training and returns ``final_value`` after ``total_iters``.
        last_step (int): Defaults to -1 (fresh start).
        verbose (bool): Print every update. Defaults to False.
        param_group (str, optional): Schedule only the optimizer groups whose
            ``schedule_group`` is this name (set by
            :class:`~dino_mm.LayerDecayOptimWrapperConstructor`'s
            ``paramwise_cfg.schedule_groups``); the other groups keep their values, so one
            scheduler per name gives each part of the model its own schedule. A rank that
            holds none of those groups (a rank-partitioned multi-distillation student on
            other ranks) has nothing to schedule. Defaults to None (every group).
    """

    def __init__(self,
                 optimizer: Optimizer,
                 param_name: str,
                 base_value: float,
                 final_value: float,
                 total_iters: int,
                 warmup_iters: int = 0,
                 start_warmup_value: float = 0.,
                 freeze_iters: int = 0,
                 freeze_last_layer_iters: int = 0,
                 scaling_rule: Optional[str] = None,
                 batch_size_per_gpu: Optional[int] = None,
                 schedule_version: str = 'v1',
                 begin: int = 0,
                 end: int = INF,
                 last_step: int = -1,
                 by_epoch: bool = False,
                 verbose: bool = False,
                 param_group: Optional[str] = None) -> None:
        self.param_group = param_group
        if param_group is not None:
            wrapped = getattr(optimizer, 'optimizer', optimizer)
            if not all('schedule_group' in g for g in wrapped.param_groups):
                raise ValueError(
                    f'DINOCosineParamScheduler(param_group={param_group!r}): the optimizer '
                    'groups carry no schedule_group; set optim_wrapper.paramwise_cfg.'
                    'schedule_groups (dino_mm.LayerDecayOptimWrapperConstructor) with '
                    f'{param_group!r} among its names.')
        if param_name not in ('lr', 'weight_decay'):
            raise ValueError("DINOCosineParamScheduler: param_name must be 'lr' or "
                             f"'weight_decay', got {param_name!r}.")
        if by_epoch:
            raise ValueError('DINOCosineParamScheduler follows the official per-iteration '
                             'schedule; set by_epoch=False and give lengths in '
                             'iterations (epochs * epoch_length).')
        if begin != 0:
            raise ValueError('DINOCosineParamScheduler: begin must be 0; shift the schedule '
                             'with freeze_iters / warmup_iters instead.')
        if freeze_last_layer_iters and param_name != 'lr':
            raise ValueError('freeze_last_layer_iters only applies to param_name="lr".')
        for name, value in (('base_value', base_value), ('final_value', final_value),
                            ('start_warmup_value', start_warmup_value)):
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(
                    f'DINOCosineParamScheduler(param_name={param_name!r}): {name}={value!r} '
                    f'is not a valid {param_name}: a negative (or non-finite) '
                    f'{param_name} makes the optimizer ascend the loss / grow the weights. '
                    f'Set param_scheduler[...].{name} to a value >= 0.')
        if schedule_version not in ('v1', 'v2'):
            raise ValueError(f"DINOCosineParamScheduler: schedule_version must be 'v1' "
                             f"(DINOv2 CosineScheduler) or 'v2' (DINOv3 schedules block), "
                             f'got {schedule_version!r}.')
        if schedule_version == 'v2' and freeze_iters:
            raise ValueError("DINOCosineParamScheduler: schedule_version='v2' has no "
                             'freeze_iters (the DINOv3 schedules block has none); set it '
                             'to 0.')
        given = (float(base_value), float(final_value))
        if scaling_rule is not None:
            if batch_size_per_gpu is None:
                raise ValueError(f'scaling_rule={scaling_rule!r} needs batch_size_per_gpu '
                                 '(the per-process batch size of the train dataloader).')
            base_value = scale_lr(base_value, scaling_rule, batch_size_per_gpu)
            if schedule_version == 'v2':
                final_value = scale_lr(final_value, scaling_rule, batch_size_per_gpu)
        if param_group is None:  # per-group schedules all differ from the optimizer's value
            _warn_if_overriding(optimizer, param_name,
                                (*given, base_value, final_value, start_warmup_value),
                                base_value, final_value)
        self.schedule_version = schedule_version
        if schedule_version == 'v1':
            self.schedule = CosineSchedule(base_value, final_value, total_iters,
                                           warmup_iters, start_warmup_value, freeze_iters)
            self.last_layer_schedule = CosineSchedule(
                base_value, final_value, total_iters, warmup_iters, start_warmup_value,
                freeze_iters, zero_until=freeze_last_layer_iters)
        else:
            self.schedule = _V2Schedule(start_warmup_value, base_value, final_value,
                                        warmup_iters, total_iters)
            self.last_layer_schedule = _V2Schedule(start_warmup_value, base_value,
                                                   final_value, warmup_iters, total_iters,
                                                   zero_until=freeze_last_layer_iters)
        super().__init__(optimizer, param_name, begin=0, end=INF,
                         last_step=last_step, by_epoch=False, verbose=verbose)

    def state_dict(self) -> dict:
        """Scheduler state without the schedule objects.

        The schedules are rebuilt from the config, and keeping only plain Python
        values lets checkpoints load with ``torch.load(weights_only=True)``.
        """
        state = super().state_dict()
        state.pop('schedule', None)
        state.pop('last_layer_schedule', None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the step count, then set the optimizer to *this* scheduler's value.

        MMEngine resumes the optimizer state (with the lr of the run that wrote the
        checkpoint) before the schedulers, and a scheduler only writes the optimizer
        after the next iteration. A run resumed on a different world size or batch size
        (so with a different scaled lr) would train its first iteration with the old
        value; writing the current value now makes that iteration follow the new rule.
        For an unchanged run the value written equals the one loaded.
        """
        super().load_state_dict(state_dict)
        for group, value in zip(self.optimizer.param_groups, self._get_value()):
            group[self.param_name] = value
        self._last_value = [group[self.param_name] for group in self.optimizer.param_groups]

    def _get_value(self) -> List[float]:
        it = self.last_step
        value = self.schedule(it)
        values = []
        for group in self.optimizer.param_groups:
            if self.param_group is not None and group.get('schedule_group') != self.param_group:
                values.append(group[self.param_name])  # another scheduler's group
            elif self.param_name == 'lr':
                base = self.last_layer_schedule(it) if group.get('is_last_layer',
                                                                 False) else value
                values.append(base * group.get('lr_mult', 1.))
            else:
                values.append(value * group.get('wd_mult', 1.))
        return values


# ------------------------------------------------------------------ run-time adjustments
#: Keys of iteration-based mmengine scheduler entries that measure a length or position in
#: iterations (scaled with ``train_cfg.max_iters``). Any key ending in ``_iters`` or
#: ``_iter`` counts too.
_ITER_KEYS = ('begin', 'end', 'total_steps', 'T_max')
#: The same for dino_mm hooks whose iteration arguments have other names.
_HOOK_ITER_KEYS = ('it_first_update', 'update_frequency', 'it_load_ema_teacher')


def _is_iteration_key(key: str, entry: dict) -> bool:
    if key.endswith('_iters') or key.endswith('_iter') or key in _HOOK_ITER_KEYS:
        return True
    # mmengine's own schedulers count in iterations only when by_epoch=False
    return key in _ITER_KEYS and entry.get('by_epoch', True) is False


def _entries(cfg) -> List[tuple]:
    """``(label, dict)`` of every parameter-scheduler and custom-hook entry of ``cfg``."""
    out = []
    scheds = cfg.get('param_scheduler', None) or []
    if isinstance(scheds, dict):
        scheds = [scheds]
    out += [(f'param_scheduler[{i}]', e) for i, e in enumerate(scheds) if isinstance(e, dict)]
    hooks = cfg.get('custom_hooks', None) or []
    out += [(f'custom_hooks[{i}] ({e.get("type")})', e) for i, e in enumerate(hooks)
            if isinstance(e, dict)]
    return out


def _dotted(label: str, key: str) -> str:
    """``'param_scheduler[0]', 'end'`` -> ``'param_scheduler.0.end'`` (a --cfg-options key)."""
    head = label.split(' ')[0].replace('[', '.').replace(']', '')
    return f'{head}.{key}'


def _loader_batch_size(cfg) -> Optional[int]:
    loader = cfg.get('train_dataloader', None)
    if not isinstance(loader, dict):
        return None
    batch = loader.get('batch_size', None)
    if batch is None and isinstance(loader.get('batch_sampler', None), dict):
        batch = loader['batch_sampler'].get('batch_size', None)
    return int(batch) if isinstance(batch, int) and not isinstance(batch, bool) else None


def apply_run_overrides(cfg, cfg_options: Optional[Mapping] = None,
                        max_iters: Optional[int] = None,
                        keep_lengths: bool = False) -> List[str]:
    """What every training entry point does with the user's overrides, in one place.

    Merges ``--cfg-options`` (checked by
    :func:`dino_mm.engine.config_checks.validate_cfg_options`), then an explicit
    ``max_iters`` (``tools/demo.py --max-iters``), then makes the schedules follow the
    run with :func:`fit_schedules_to_run` against the config file's own ``max_iters``.
    Used by ``tools/train.py`` and ``tools/demo.py``.

    Returns:
        list[str]: The schedule changes made (see :func:`fit_schedules_to_run`).
    """
    declared = (cfg.get('train_cfg', None) or {}).get('max_iters', None)
    if cfg_options:
        from dino_mm.engine.config_checks import validate_cfg_options
        cfg.merge_from_dict(validate_cfg_options(cfg, cfg_options))
    if max_iters is not None:
        cfg.train_cfg.max_iters = max_iters
    return fit_schedules_to_run(cfg, declared, keep_lengths=keep_lengths,
                                explicit=cfg_options or ())


def fit_schedules_to_run(cfg, declared_max_iters: Optional[int] = None,
                         keep_lengths: bool = False,
                         explicit: Iterable[str] = ()) -> List[str]:
    """Make the schedules of ``cfg`` follow the batch size and length the run uses.

    Config files compute schedule fields when they are parsed (``total_iters =
    epochs * epoch_length``, ``batch_size_per_gpu=batch_size_per_gpu``), so an override
    given afterwards (``--cfg-options train_dataloader.batch_size=8 train_cfg.max_iters=40``)
    would leave the lr scaled for the old batch and the warm-up / cosine sized for the
    old length. This function, called by ``tools/train.py`` (and ``tools/demo.py``) after
    the overrides are merged:

    * sets ``batch_size_per_gpu`` of every parameter scheduler with a ``scaling_rule``
      (and of the model, for the linear probe's own lr rule) to the train dataloader's
      batch size;
    * when ``train_cfg.max_iters`` differs from ``declared_max_iters`` (the value of the
      config file itself), scales every iteration count of the parameter schedulers and
      custom hooks (keys ending in ``_iters`` / ``_iter``, and ``begin`` / ``end`` /
      ``total_steps`` / ``T_max`` of iteration-based mmengine schedulers) by
      ``max_iters / declared_max_iters`` (rounded down), so warm-ups and decays keep their
      share of the run, as in LightlyTrain and the official ``epochs`` override. Pass
      ``keep_lengths=True`` to keep the absolute lengths instead.

    A value the user set explicitly (a key of ``explicit``, e.g. the ``--cfg-options`` key
    ``param_scheduler.0.total_iters``) is never changed.

    The world size is not fixed here: :func:`scale_lr` reads it when the scheduler is
    built, i.e. in the run itself (and again after a resume on another world size).

    Args:
        cfg (Config): The merged config (changed in place).
        declared_max_iters (int, optional): ``train_cfg.max_iters`` before the overrides.
        keep_lengths (bool): Do not rescale iteration counts. Defaults to False.
        explicit (Iterable[str]): Dotted keys set by the user (``--cfg-options`` keys).

    Returns:
        list[str]: One line per change (also logged), empty when nothing changed.
    """
    explicit = {k.lstrip('+') for k in explicit}
    changes = []
    batch = _loader_batch_size(cfg)
    if batch is not None:
        targets = [(label, e) for label, e in _entries(cfg)
                   if label.startswith('param_scheduler') and e.get('scaling_rule')]
        model = cfg.get('model', None)
        if isinstance(model, dict) and 'batch_size_per_gpu' in model:
            targets.append(('model', model))
        for label, entry in targets:
            old = entry.get('batch_size_per_gpu', None)
            if old != batch and _dotted(label, 'batch_size_per_gpu') not in explicit:
                entry['batch_size_per_gpu'] = batch
                changes.append(f'{label}.batch_size_per_gpu {old} -> {batch} '
                               f'(train_dataloader.batch_size)')
    train_cfg = cfg.get('train_cfg', None) or {}
    new_iters = train_cfg.get('max_iters', None)
    if (not keep_lengths and isinstance(declared_max_iters, int) and declared_max_iters > 0
            and isinstance(new_iters, int) and new_iters != declared_max_iters):
        lengths = []
        for label, entry in _entries(cfg):
            for key in list(entry):
                value = entry[key]
                if (not _is_iteration_key(key, entry) or isinstance(value, bool)
                        or not isinstance(value, int) or value >= INF or value <= 0
                        or _dotted(label, key) in explicit):
                    continue
                # rounded down (a warm-up shorter than one iteration is none), but the
                # end / total length of a schedule never vanishes (mmengine schedulers
                # need end > begin)
                scaled = value * new_iters // declared_max_iters
                if key in ('end', 'total_steps', 'T_max', 'total_iters'):
                    scaled = max(1, scaled)
                if scaled != value:
                    entry[key] = scaled
                    lengths.append(f'{label}.{key} {value} -> {scaled}')
        if lengths:
            changes += [f'train_cfg.max_iters {declared_max_iters} -> {new_iters}: schedule '
                        f'lengths scaled by {new_iters}/{declared_max_iters} (tools/train.py '
                        f'--keep-schedule-lengths keeps them)'] + lengths
    for line in changes:
        print_log(f'[schedules] {line}', logger='current', level=logging.INFO)
    return changes
