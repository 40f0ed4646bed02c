"""Distillation of a frozen DINO teacher into smaller students (docs/reference.md §4.5-§4.6).

* :class:`DINOv3Distillation` — one student trained with the DINOv3 losses against the
  targets of a frozen, pretrained teacher (backbone + DINO head + iBOT head), the DINOv2
  / DINOv3 recipe for the released small models. An EMA of the student
  (``student_ema``) is kept for evaluation, like the official ``model_ema``.
* :class:`MultiDistillation` — DINOv3 multi-distillation: one frozen teacher, several
  students of different sizes trained in one job; the teacher runs once per batch and its
  targets feed every student.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from dino_mm.registry import MODELS
from ..losses import DINOLoss, iBOTPatchLoss
from .base import FrozenModuleDict, SSLMetaArch
from .dinov2 import _build
from .dinov3 import DINOv3, _v3_head

__all__ = ['DINOv3Distillation', 'MultiDistillation', 'build_frozen_teacher',
           'check_teacher_compatibility']


def build_frozen_teacher(teacher: dict, what: str = 'teacher') -> FrozenModuleDict:
    """Build the frozen teacher component ``(backbone, dino_head[, ibot_head])``.

    Args:
        teacher (dict): ``dict(backbone=..., dino_head=..., ibot_head=...)`` configs, as in
            the teacher's own pretraining config (official ``distillation.full_cfg_path``).
            Its weights come from a checkpoint (:func:`load_frozen_teacher`).
        what (str): Name used in errors.
    """
    if not isinstance(teacher, dict) or 'backbone' not in teacher or 'dino_head' not in teacher:
        raise KeyError(f'{what} must be a dict with `backbone` and `dino_head` (and optionally '
                       '`ibot_head`) configs, as in the pretraining config of the teacher.')
    backbone = _build(dict(teacher['backbone'], drop_path_rate=0.0), f'{what}.backbone')
    head_defaults = dict(type='dino_mm.DINOHead', in_dim=backbone.embed_dim)
    modules = dict(backbone=backbone,
                   dino_head=_build(_v3_head(teacher['dino_head']), f'{what}.dino_head',
                                    **head_defaults))
    if teacher.get('ibot_head') is not None:
        modules['ibot_head'] = _build(_v3_head(teacher['ibot_head']), f'{what}.ibot_head',
                                      **head_defaults)
    return FrozenModuleDict(modules)


def load_frozen_teacher(module: nn.ModuleDict, path: str, what: str) -> None:
    """Load a teacher training checkpoint (``teacher.*`` keys, or bare ModuleDict keys)."""
    from dino_mm.engine.checkpoint import check_checkpoint_compatibility
    state = check_checkpoint_compatibility(path, module.state_dict(), what,
                                           prefixes=('teacher.', ''))
    module.load_state_dict(state, strict=True)


def _head_out_dim(head: nn.Module) -> int:
    return head.last_layer.out_features if hasattr(head.last_layer, 'out_features') else -1


def check_teacher_compatibility(student: 'DINOv3Distillation', teacher: nn.ModuleDict,
                                name: str = 'DINOv3Distillation') -> None:
    """Refuse a student that cannot learn from ``teacher``: head sizes (the student predicts
    the teacher's prototypes) and patch size (the iBOT masks index both token grids)."""
    pairs = [('dino_head', 'dino_head')]
    if student.ibot_separate_head:
        if 'ibot_head' not in teacher:
            raise KeyError(f'{name}: the student has an ibot_head but the teacher config has '
                           'none; add teacher.ibot_head.')
        pairs.append(('ibot_head', 'ibot_head'))
    for s_key, t_key in pairs:
        s_dim = _head_out_dim(student.student[s_key])
        t_dim = _head_out_dim(teacher[t_key])
        if s_dim != t_dim:
            raise ValueError(f'{name}: student {s_key}.out_dim ({s_dim}) must equal the teacher '
                             f"{t_key}.out_dim ({t_dim}); the student predicts the teacher's "
                             'prototypes.')
    s_patch = student.student.backbone.patch_size
    t_patch = teacher.backbone.patch_size
    if s_patch != t_patch:
        raise ValueError(f'{name}: student patch size {s_patch} differs from the teacher patch '
                         f'size {t_patch}; iBOT masks index both token grids.')


@MODELS.register_module()
class DINOv3Distillation(DINOv3):
    """Train a student with the DINOv3 losses against a frozen pretrained teacher.

    ``teacher`` holds the frozen big model (``teacher.backbone``, ``teacher.dino_head``,
    ``teacher.ibot_head``) loaded from ``teacher_ckpt`` in :meth:`init_weights`;
    ``student_ema`` is an EMA copy of the student (updated by
    :class:`~dino_mm.engine.hooks.TeacherMomentumHook` through :meth:`update_teacher`) and
    is what :meth:`extract_feat` evaluates. As in the official distillation, the student's
    global crops are *not* masked; iBOT compares the student and teacher tokens at the
    masked positions. Student head ``out_dim`` must equal the teacher's.

    Args:
        backbone (dict): Student backbone.
        dino_head (dict): Student DINO head (``out_dim`` = teacher prototypes).
        teacher (dict): ``dict(backbone=..., dino_head=..., ibot_head=...)`` of the teacher.
        teacher_ckpt (str, optional): Teacher training checkpoint (``teacher.*`` keys of a
            dino_mm pretraining run, or a file of ``backbone.*`` / ``dino_head.*`` keys).
            None keeps the randomly initialised teacher (tests only).
        ibot_head (dict, optional): Student iBOT head.
        external_teacher (bool): Build no teacher; targets are passed to
            :meth:`compute_losses` by a :class:`MultiDistillation` owner. Defaults to False.
        **kwargs: :class:`DINOv3` arguments (Gram anchoring is not supported here).
    """

    ema_name = 'student_ema'  # `teacher` is the frozen pretrained model
    mask_student_globals = False  # official distillation: unmasked student global crops

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 dino_head: dict,
                 teacher: Optional[dict] = None,
                 teacher_ckpt: Optional[str] = None,
                 ibot_head: Optional[dict] = None,
                 external_teacher: bool = False,
                 **kwargs) -> None:
        if kwargs.get('gram_loss') is not None:
            raise ValueError('DINOv3Distillation does not use Gram anchoring; remove gram_loss.')
        super().__init__(backbone=backbone, dino_head=dino_head, ibot_head=ibot_head, **kwargs)
        self.teacher_ckpt = teacher_ckpt
        self.external_teacher = external_teacher
        if external_teacher:
            self.teacher = None
            return
        if teacher is None:
            raise KeyError('DINOv3Distillation needs `teacher` (backbone / dino_head / '
                           'ibot_head configs of the pretrained teacher).')
        self.teacher = build_frozen_teacher(teacher)
        check_teacher_compatibility(self, self.teacher)

    def init_weights(self) -> None:
        """Initialise the student (its EMA = a copy), then load the frozen teacher."""
        super().init_weights()
        if self.teacher is not None and self.teacher_ckpt:
            load_frozen_teacher(self.teacher, self.teacher_ckpt, 'model.teacher_ckpt')

    @torch.no_grad()
    def teacher_output(self, inputs: Dict[str, Any]) -> Dict[str, Optional[torch.Tensor]]:
        """The frozen teacher's targets (see :meth:`SSLMetaArch.teacher_output`)."""
        if self.teacher is None:
            raise RuntimeError('DINOv3Distillation(external_teacher=True) gets its targets '
                               'from a MultiDistillation model; call compute_losses().')
        return super().teacher_output(inputs)


@MODELS.register_module()
class MultiDistillation(SSLMetaArch):
    """DINOv3 multi-distillation: one frozen teacher, several students, one teacher pass.

    Every iteration the teacher backbone and heads run **once** on the global crops;
    the Sinkhorn-Knopp (or softmax-centered) targets are computed once and passed to each
    student (a :class:`DINOv3Distillation` with ``external_teacher=True``, so each has its
    own backbone, heads, loss weights and EMA). Loss terms are logged per student as
    ``<name>.dino_local_crops_loss`` etc.; the total is their sum, and since the students
    share no parameter, each student's gradient is that of its own loss.

    Relation to the official layout: the official ``MultiDistillationMetaArch`` gives each
    student a disjoint range of GPU ranks (``ranks_range``); the teacher is sharded over all
    ranks, runs once on the global batch, and each rank range trains its student on its own
    part of that batch (each student sees ``global_batch * len(range) / world_size``
    images per step and its gradients are reduced inside its range only). Here a single
    process (or every rank of a data-parallel job) holds all students; each student sees
    the whole local batch, and all students' memory adds up on every device. The per-step
    teacher cost is the same (one forward per batch), and the per-student losses are
    identical to the official ones for a given batch.

    Args:
        teacher (dict): ``dict(backbone=..., dino_head=..., ibot_head=...)`` of the teacher.
        students (dict[str, dict]): Per student name, the :class:`DINOv3Distillation`
            arguments (``backbone``, ``dino_head``, ``ibot_head``, loss weights ...).
        teacher_ckpt (str, optional): Teacher training checkpoint (see
            :class:`DINOv3Distillation`).
        centering (str): 'sinkhorn_knopp' (official) or 'centering'.
        teacher_temp (float): Initial teacher temperature (set by TeacherTempHook).
        center_momentum (float): For softmax centering. Defaults to 0.9.
        clip_grad (float, optional): Per student sub-module clipping. Defaults to 3.0.
        data_preprocessor (dict, optional): MMEngine data preprocessor config.
        init_cfg (dict, optional): MMEngine init config.
    """

    def __init__(self,
                 teacher: dict,
                 students: Dict[str, dict],
                 teacher_ckpt: Optional[str] = None,
                 centering: str = 'sinkhorn_knopp',
                 teacher_temp: float = 0.07,
                 center_momentum: float = 0.9,
                 clip_grad: Optional[float] = 3.0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(centering=centering, teacher_temp=teacher_temp, clip_grad=clip_grad,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not students:
            raise ValueError('MultiDistillation needs at least one student in `students`.')
        self.teacher_ckpt = teacher_ckpt
        self.teacher = build_frozen_teacher(teacher)
        self.teacher_forward_calls = 0
        built = {}
        for name, cfg in students.items():
            if '.' in name:
                raise ValueError(f'MultiDistillation: student name {name!r} must not contain '
                                 '"."; it becomes a module name.')
            cfg = dict(cfg)
            cfg.pop('type', None)
            if cfg.get('koleo_loss_distributed', False):
                # Official multi-distillation always computes KoLeo per GPU.
                raise ValueError(f'MultiDistillation: student {name!r} sets '
                                 'koleo_loss_distributed=True; multi-distillation uses the '
                                 'per-rank KoLeo only (as the official recipe). Remove it.')
            cfg.update(external_teacher=True, centering=centering, clip_grad=clip_grad)
            student = DINOv3Distillation(**cfg)
            check_teacher_compatibility(student, self.teacher,
                                        f'MultiDistillation student {name!r}')
            built[name] = student
        self.students = nn.ModuleDict(built)
        first = next(iter(built.values()))
        self.do_dino = first.do_dino
        self.do_ibot = first.do_ibot
        self.ibot_separate_head = 'ibot_head' in self.teacher
        dino_dim = _head_out_dim(self.teacher.dino_head)
        ibot_dim = (_head_out_dim(self.teacher.ibot_head) if self.ibot_separate_head else
                    dino_dim)
        # Shared target makers (their centers are the teacher's, common to all students).
        self.dino_loss = DINOLoss(dino_dim, center_momentum=center_momentum)
        self.ibot_patch_loss = iBOTPatchLoss(ibot_dim, center_momentum=center_momentum)

    @property
    def local_loss_weight(self) -> float:
        return next(iter(self.students.values())).local_loss_weight

    @local_loss_weight.setter
    def local_loss_weight(self, value: float) -> None:
        for student in self.students.values():
            student.local_loss_weight = value

    def trained_students(self) -> List[Tuple[str, nn.ModuleDict]]:
        """Every student's module dict, its log keys prefixed by the student's name."""
        return [(f'{name}.', s.student) for name, s in self.students.items()]

    def ema_pairs(self) -> List[Tuple[nn.ModuleDict, nn.ModuleDict]]:
        """Each student into its own ``student_ema``."""
        return [pair for s in self.students.values() for pair in s.ema_pairs()]

    def init_weights(self) -> None:
        """Initialise every student, then load the frozen teacher from ``teacher_ckpt``."""
        for student in self.students.values():
            student.init_weights()
        if self.teacher_ckpt:
            load_frozen_teacher(self.teacher, self.teacher_ckpt, 'model.teacher_ckpt')

    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Student-EMA class tokens, one (B, D) tensor per student name."""
        return {name: s.extract_feat(inputs) for name, s in self.students.items()}

    @torch.no_grad()
    def teacher_output(self, inputs: Dict[str, Any]) -> Dict[str, Optional[torch.Tensor]]:
        """One teacher pass per batch; its targets feed every student."""
        self.teacher_forward_calls += 1
        return super().teacher_output(inputs)

    def compute_losses(self, inputs: Dict[str, Any],
                       targets: Dict[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """The DINOv3 losses of every student, prefixed by its name."""
        losses: Dict[str, torch.Tensor] = {}
        for name, student in self.students.items():
            terms = student.compute_losses(inputs, targets)
            losses.update({f'{name}.{k}': v for k, v in terms.items()})
        return losses
