"""Checks at the start of a DINOv3 stage that continues a previous one.

:class:`StageCheckpointHook` finds the previous stage's checkpoint by convention (the
``last_checkpoint`` of its work dir), checks, before anything is initialised or loaded, that
it exists and fits the model, and can start the student from the loaded teacher (official
``student.resume_from_teacher_chkpt``). A distillation stage takes the previous stage's
checkpoint as its frozen teacher instead (``load_previous_as='teacher_ckpt'``).
"""
import os.path as osp
from typing import Optional, Sequence

from mmengine.hooks import Hook

from dino_mm.registry import HOOKS
from .teacher_hooks import unwrap_model as _unwrap

__all__ = ['StageCheckpointHook']


def _load_from_and_resume(runner) -> tuple:
    """The runner's ``load_from`` and ``resume`` arguments. MMEngine keeps them only as
    private attributes (``runner.cfg`` lacks them when a Runner is built directly), and
    this hook must see them in ``before_run``, before MMEngine acts on them."""
    return getattr(runner, '_load_from', None), bool(getattr(runner, '_resume', False))


def _set_load_from(runner, path: str) -> None:
    # MMEngine reads the private attribute in load_or_resume(), after before_run.
    runner._load_from = path


#: Config-name suffixes of a stage's launch variants (``X_fsdp.py`` runs stage ``X`` sharded).
LAUNCH_VARIANTS = ('_fsdp', '_ddp')


def previous_stage_checkpoint(work_dir: str, previous_stage: str,
                              previous_work_dir: Optional[str] = None,
                              what: str = 'load_from') -> str:
    """The last checkpoint of the previous stage, by the work-dir convention.

    ``tools/train.py`` runs a config ``X.py`` in ``work_dirs/X``; the previous stage's run is
    the sibling folder ``<parent of work_dir>/<previous_stage>`` (or ``previous_work_dir``),
    and MMEngine's ``last_checkpoint`` file there names its newest checkpoint. A launch
    variant of a stage (work dir ``<stage>_fsdp`` / ``<stage>_ddp``) continues the same
    variant of the previous stage (``<previous_stage>_fsdp``) when that run exists, else
    the plain ``<previous_stage>`` run; the checkpoint may be a file or a sharded folder.

    Args:
        work_dir (str): This stage's work dir.
        previous_stage (str): The previous stage's config name.
        previous_work_dir (str, optional): Its work dir, when not the sibling folder.
        what (str): The config entry a user can set instead, for the error message.

    Raises:
        FileNotFoundError: The previous stage has not run (or wrote no checkpoint); the
            message names the folder and the command that makes it.
    """
    if previous_work_dir:
        folder = previous_work_dir
    else:
        parent, own = osp.split(osp.abspath(work_dir))
        # A launch variant (X_fsdp.py of stage X) continues the same variant of the previous
        # stage when that run exists, else the plain one.
        names = [previous_stage + v for v in LAUNCH_VARIANTS
                 if own.endswith(v) and not previous_stage.endswith(v)] + [previous_stage]
        folders = [osp.join(parent, n) for n in names]
        found = [f for f in folders if osp.isfile(osp.join(f, 'last_checkpoint'))]
        folder = found[0] if found else folders[-1]
        previous_stage = osp.basename(folder)
    marker = osp.join(folder, 'last_checkpoint')
    if not osp.isfile(marker):
        raise FileNotFoundError(
            f'StageCheckpointHook: this stage continues "{previous_stage}", but "{marker}" '
            'does not exist: run that stage first (python tools/train.py '
            f'configs/.../{previous_stage}.py, which writes to {folder}), or set {what} '
            'to its checkpoint.')
    with open(marker, encoding='utf-8') as f:
        path = f.read().strip()
    if not osp.isabs(path) and not osp.exists(path):
        path = osp.join(folder, osp.basename(path.rstrip('/')))
    if not osp.exists(path):  # a file, or the folder of a sharded checkpoint
        raise FileNotFoundError(f'StageCheckpointHook: "{marker}" names "{path}", which does '
                                f'not exist; rerun the "{previous_stage}" stage or set '
                                f'{what} to one of its checkpoints.')
    return path


@HOOKS.register_module()
class StageCheckpointHook(Hook):
    """Validate the previous stage's checkpoint before training; optionally re-seed the student.

    In ``before_run`` (MMEngine calls it before weight init and ``load_from``), unless the
    run resumes: ``load_from`` must be set (when ``require_load_from``), exist, and hold
    every model key except those under ``allow_missing`` with the same shapes. A mismatch
    raises ``ValueError`` naming the file and listing a few keys with both shapes.

    With ``previous_stage`` and no ``load_from`` in the config, the checkpoint is the one the
    previous stage's run wrote last (:func:`previous_stage_checkpoint`), so a stage config
    inherits the previous one and names it, with no path typed by hand; a Gram model whose
    ``gram_ckpt`` is unset then takes its Gram teacher from that checkpoint's EMA teacher
    (official stages 2 and 3).

    With ``load_previous_as='teacher_ckpt'`` (distillation, official stage 4) the previous
    stage's checkpoint becomes the model's ``teacher_ckpt`` (the frozen teacher, loaded
    strictly by ``init_weights`` right after this hook) unless the config sets one; the
    students start from their own initialisation and ``load_from`` is not required.

    With ``student_from_teacher`` the student is overwritten with the loaded teacher at the
    start of a fresh run (official ``student.resume_from_teacher_chkpt``, stage 3).

    Args:
        previous_stage (str, optional): Config name (= work-dir folder) of the previous
            stage. Defaults to None.
        previous_work_dir (str, optional): That stage's work dir when it is not the sibling
            folder of this run's. Defaults to None.
        require_load_from (bool): Fail when ``load_from`` is not set. Defaults to True.
        allow_missing (Sequence[str]): Model key prefixes the checkpoint may lack.
            Defaults to ``('gram_teacher.', )`` (stage 1 has no Gram teacher).
        student_from_teacher (bool): Defaults to False.
        load_previous_as (str): ``'load_from'`` (the whole model continues, stages 2-3) or
            ``'teacher_ckpt'`` (the frozen teacher of a distillation). Defaults to
            ``'load_from'``.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 previous_stage: Optional[str] = None,
                 previous_work_dir: Optional[str] = None,
                 require_load_from: bool = True,
                 allow_missing: Sequence[str] = ('gram_teacher.', ),
                 student_from_teacher: bool = False,
                 load_previous_as: str = 'load_from') -> None:
        if load_previous_as not in ('load_from', 'teacher_ckpt'):
            raise ValueError("StageCheckpointHook: load_previous_as must be 'load_from' or "
                             f"'teacher_ckpt', got {load_previous_as!r}.")
        if load_previous_as == 'teacher_ckpt' and student_from_teacher:
            raise ValueError('StageCheckpointHook: student_from_teacher needs '
                             "load_previous_as='load_from' (a distillation student starts "
                             'from its own initialisation).')
        self.load_previous_as = load_previous_as
        self.previous_stage = previous_stage
        self.previous_work_dir = previous_work_dir
        self.require_load_from = require_load_from
        self.allow_missing = tuple(allow_missing)
        self.student_from_teacher = student_from_teacher

    def before_run(self, runner) -> None:
        from dino_mm.engine.checkpoint import check_checkpoint_compatibility
        path, resume = _load_from_and_resume(runner)
        if resume:
            return
        model = _unwrap(runner.model)
        if self.load_previous_as == 'teacher_ckpt':
            self._set_teacher(runner, model)
            return
        if not path and self.previous_stage:
            path = previous_stage_checkpoint(runner.work_dir, self.previous_stage,
                                             self.previous_work_dir)
            _set_load_from(runner, path)
            if getattr(model, 'use_gram', False) and not getattr(model, 'gram_ckpt', None):
                model.gram_ckpt = path  # read by init_weights, which runs after this hook
            runner.logger.info(f'StageCheckpointHook: continuing stage "{self.previous_stage}" '
                               f'from "{path}".')
        if not path:
            if self.require_load_from:
                raise ValueError(
                    f'StageCheckpointHook: this stage ({runner.experiment_name}) continues a '
                    'previous stage but `load_from` is not set; set load_from to the previous '
                    "stage's checkpoint (e.g. --cfg-options load_from=work_dirs/<stage>/"
                    'iter_<N>.pth).')
            return
        check_checkpoint_compatibility(path, model.state_dict(), 'load_from',
                                       ignore_missing=self.allow_missing)
        runner.logger.info(f'StageCheckpointHook: load_from "{path}" matches the model.')

    def _set_teacher(self, runner, model) -> None:
        if not hasattr(model, 'teacher_ckpt'):
            raise TypeError(f"StageCheckpointHook(load_previous_as='teacher_ckpt'): "
                            f'{type(model).__name__} has no teacher_ckpt; use it with '
                            'DINOv3Distillation or MultiDistillation.')
        if model.teacher_ckpt:  # set in the config: it wins over the convention
            return
        if not self.previous_stage:
            raise ValueError('StageCheckpointHook: this distillation stage has no teacher: set '
                             'previous_stage to the stage whose checkpoint is the teacher, or '
                             'model.teacher_ckpt to a checkpoint file.')
        model.teacher_ckpt = previous_stage_checkpoint(runner.work_dir, self.previous_stage,
                                                       self.previous_work_dir,
                                                       what='model.teacher_ckpt')
        runner.logger.info(f'StageCheckpointHook: the frozen teacher is stage '
                           f'"{self.previous_stage}" from "{model.teacher_ckpt}".')

    def before_train(self, runner) -> None:
        if not self.student_from_teacher or runner.iter != 0:
            return
        model = _unwrap(runner.model)
        for key in model.student:
            model.student[key].load_state_dict(model.teacher[key].state_dict(), strict=True)
        runner.logger.info('StageCheckpointHook: student initialised from the loaded teacher.')
