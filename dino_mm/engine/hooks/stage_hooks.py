"""Checks at the start of a DINOv3 stage that continues a previous one.

:class:`StageCheckpointHook` checks, before anything is initialised or loaded, that
``load_from`` (the previous stage's checkpoint) exists and fits the model, and can start the
student from the loaded teacher (official ``student.resume_from_teacher_chkpt``).
"""
from typing import Sequence

from mmengine.hooks import Hook

from dino_mm.registry import HOOKS
from .teacher_hooks import unwrap_model as _unwrap

__all__ = ['StageCheckpointHook']


def _load_from_and_resume(runner) -> tuple:
    """The runner's ``load_from`` and ``resume`` arguments. MMEngine keeps them only as
    private attributes (``runner.cfg`` lacks them when a Runner is built directly), and
    this hook must see them in ``before_run``, before MMEngine acts on them."""
    return getattr(runner, '_load_from', None), bool(getattr(runner, '_resume', False))


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
        from dino_mm.engine.checkpoint import check_checkpoint_compatibility
        path, resume = _load_from_and_resume(runner)
        if resume:
            return
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
