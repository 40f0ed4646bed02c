"""Distillation of a frozen DINO teacher into smaller students (docs/reference.md §4.5-§4.6).

* :class:`DINOv3Distillation` — one student trained with the DINOv3 losses against the
  targets of a frozen, pretrained teacher (backbone + DINO head + iBOT head), the DINOv2
  / DINOv3 recipe for the released small models. An EMA of the student
  (``student_ema``) is kept for evaluation, like the official ``model_ema``.
* :class:`MultiDistillation` — DINOv3 multi-distillation: one frozen teacher, several
  students of different sizes trained in one job; the teacher runs once per batch and its
  targets feed every student.
"""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from torch import nn

from dino_mm.registry import MODELS
from ..losses import DINOLoss, iBOTPatchLoss
from .dinov2 import _build, clip_grad_per_module, unscale_amp_grads
from .dinov3 import DINOv3, _v3_head, check_checkpoint_compatibility
from .optimization import SSLOptimizationMixin

__all__ = ['DINOv3Distillation', 'MultiDistillation', 'build_frozen_teacher']


def build_frozen_teacher(teacher: dict, teacher_ckpt: Optional[str] = None,
                         what: str = 'teacher') -> nn.ModuleDict:
    """Build ``ModuleDict(backbone, dino_head[, ibot_head])`` with frozen parameters.

    Args:
        teacher (dict): ``dict(backbone=..., dino_head=..., ibot_head=...)`` configs, as in
            the teacher's own pretraining config (official ``distillation.full_cfg_path``).
        teacher_ckpt (str, optional): Loaded later by :func:`load_frozen_teacher`.
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
    module = nn.ModuleDict(modules)
    for param in module.parameters():
        param.requires_grad = False
    return module.eval()


def load_frozen_teacher(module: nn.ModuleDict, path: str, what: str) -> None:
    """Load a teacher training checkpoint (``teacher.*`` keys, or bare ModuleDict keys)."""
    state = check_checkpoint_compatibility(path, module.state_dict(), what,
                                           prefixes=('teacher.', ''))
    module.load_state_dict(state, strict=True)


def _head_out_dim(head: nn.Module) -> int:
    return head.last_layer.out_features if hasattr(head.last_layer, 'out_features') else -1


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
            :meth:`student_losses` by a :class:`MultiDistillation` owner. Defaults to False.
        **kwargs: :class:`DINOv3` arguments (Gram anchoring is not supported here).
    """

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
        # The DINOv2 constructor built `teacher` as a student copy: that is the student EMA.
        ema = self.teacher
        del self.teacher
        self.student_ema = ema
        self.teacher_ckpt = teacher_ckpt
        self.external_teacher = external_teacher
        if external_teacher:
            self.teacher = None
            return
        if teacher is None:
            raise KeyError('DINOv3Distillation needs `teacher` (backbone / dino_head / '
                           'ibot_head configs of the pretrained teacher).')
        self.teacher = build_frozen_teacher(teacher, teacher_ckpt)
        self._check_teacher_compat()

    def _check_teacher_compat(self) -> None:
        pairs = [('dino_head', 'dino_head')]
        if self.ibot_separate_head:
            if 'ibot_head' not in self.teacher:
                raise KeyError('DINOv3Distillation: the student has an ibot_head but the teacher '
                               'config has none; add teacher.ibot_head.')
            pairs.append(('ibot_head', 'ibot_head'))
        for s_key, t_key in pairs:
            s_dim = _head_out_dim(self.student[s_key])
            t_dim = _head_out_dim(self.teacher[t_key])
            if s_dim != t_dim:
                raise ValueError(f'DINOv3Distillation: student {s_key}.out_dim ({s_dim}) must '
                                 f'equal the teacher {t_key}.out_dim ({t_dim}); the student '
                                 "predicts the teacher's prototypes.")
        s_patch = self.student.backbone.patch_size
        t_patch = self.teacher.backbone.patch_size
        if s_patch != t_patch:
            raise ValueError(f'DINOv3Distillation: student patch size {s_patch} differs from the '
                             f'teacher patch size {t_patch}; iBOT masks index both token grids.')

    # The DINOv2 helpers work on `self.teacher`; in distillation the EMA lives elsewhere.
    def _copy_student_to_teacher(self) -> None:
        target = getattr(self, 'student_ema', None)
        if target is None:  # during DINOv2.__init__, `teacher` is still the EMA copy
            target = self.teacher
        for key in self.student:
            target[key].load_state_dict(self.student[key].state_dict(), strict=True)

    def train(self, mode: bool = True) -> 'DINOv3Distillation':
        nn.Module.train(self, mode)
        if getattr(self, 'student_ema', None) is not None:
            self.student_ema.eval()
        if getattr(self, 'teacher', None) is not None:
            self.teacher.eval()
        return self

    def init_weights(self) -> None:
        """Initialise the student (EMA = copy), then load the frozen teacher."""
        teacher = self.teacher
        # Keep BaseModule.init_weights away from the frozen teacher (re-initialising a
        # 7B backbone only to overwrite it is slow).
        self.teacher = None
        try:
            super().init_weights()
        finally:
            self.teacher = teacher
        if self.teacher is not None and self.teacher_ckpt:
            load_frozen_teacher(self.teacher, self.teacher_ckpt, 'model.teacher_ckpt')

    def ema_pairs(self) -> List[tuple]:
        """The student into ``student_ema`` (the distillation teacher is frozen)."""
        return [(self.student, self.student_ema)]

    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised class tokens of the student EMA backbone, (B, D)."""
        inputs = inputs.to(self._param_dtype())
        return self.student_ema.backbone.forward_features(inputs)['x_norm_clstoken']

    def teacher_backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """Student-EMA backbone weights (what is evaluated and released)."""
        return {k: v.detach().clone() for k, v in self.student_ema.backbone.state_dict().items()}

    def loss(self,
             collated_global_crops: torch.Tensor,
             collated_masks: torch.Tensor,
             mask_indices_list: torch.Tensor,
             masks_weight: torch.Tensor,
             n_masked_patches: torch.Tensor,
             collated_local_crops: Optional[torch.Tensor] = None,
             **unused) -> Dict[str, torch.Tensor]:
        """DINOv3 losses of the student against the frozen teacher's targets."""
        if self.external_teacher:
            raise RuntimeError('DINOv3Distillation(external_teacher=True) gets its targets '
                               'from a MultiDistillation model; call student_losses().')
        global_crops, local_crops, masks, mask_indices_list = self._prepare_inputs(
            collated_global_crops, collated_local_crops, collated_masks, mask_indices_list)
        teacher_dino, teacher_ibot = self.teacher_targets(global_crops, mask_indices_list,
                                                          n_masked_patches)
        return self.student_losses(global_crops, local_crops, masks, mask_indices_list,
                                   masks_weight, teacher_dino, teacher_ibot,
                                   mask_student_globals=False)


@MODELS.register_module()
class MultiDistillation(SSLOptimizationMixin, BaseModel):
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

    n_global_crops = 2

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
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not students:
            raise ValueError('MultiDistillation needs at least one student in `students`.')
        if centering not in ('centering', 'sinkhorn_knopp'):
            raise ValueError("MultiDistillation: centering must be 'centering' or "
                             f"'sinkhorn_knopp', got {centering!r}.")
        self.centering = centering
        self.teacher_temp = teacher_temp
        self.teacher_ckpt = teacher_ckpt
        self.clip_grad = clip_grad
        self.teacher = build_frozen_teacher(teacher, teacher_ckpt)
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
            # Check head sizes / patch size against the shared teacher.
            student.teacher = self.teacher
            try:
                student._check_teacher_compat()
            finally:
                student.teacher = None
            built[name] = student
        self.students = nn.ModuleDict(built)
        first = next(iter(built.values()))
        self.do_ibot = first.do_ibot
        self.ibot_separate_head = 'ibot_head' in self.teacher
        dino_dim = _head_out_dim(self.teacher.dino_head)
        ibot_dim = (_head_out_dim(self.teacher.ibot_head) if self.ibot_separate_head else
                    dino_dim)
        # Shared target makers (their centers are the teacher's, common to all students).
        self.dino_loss = DINOLoss(dino_dim, center_momentum=center_momentum)
        self.ibot_patch_loss = iBOTPatchLoss(ibot_dim, center_momentum=center_momentum)
        self.teacher.eval()

    @property
    def local_loss_weight(self) -> float:
        return next(iter(self.students.values())).local_loss_weight

    @local_loss_weight.setter
    def local_loss_weight(self, value: float) -> None:
        for student in self.students.values():
            student.local_loss_weight = value

    def train(self, mode: bool = True) -> 'MultiDistillation':
        super().train(mode)
        self.teacher.eval()
        return self

    def init_weights(self) -> None:
        """Initialise every student, then load the frozen teacher from ``teacher_ckpt``."""
        for student in self.students.values():
            student.init_weights()
        if self.teacher_ckpt:
            load_frozen_teacher(self.teacher, self.teacher_ckpt, 'model.teacher_ckpt')

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA update of every student's ``student_ema``."""
        for student in self.students.values():
            student.update_teacher(momentum)

    def forward(self, inputs: Optional[torch.Tensor] = None, data_samples=None,
                mode: str = 'tensor', **batch):
        """``mode='loss'`` takes the collate keys; ``mode='tensor'`` returns a dict of
        student-EMA class tokens per student name."""
        if mode == 'loss':
            return self.loss(**batch)
        if mode == 'tensor':
            if inputs is None:
                raise ValueError("MultiDistillation(mode='tensor') needs `inputs`.")
            return {name: s.extract_feat(inputs) for name, s in self.students.items()}
        raise ValueError(f"MultiDistillation supports mode='loss' and 'tensor', got {mode!r}.")

    @torch.no_grad()
    def teacher_targets(self, global_crops: torch.Tensor, mask_indices_list: torch.Tensor,
                        n_masked_patches: torch.Tensor):
        """One teacher pass: DINO targets (n_g, B, K) in crop order and iBOT targets (M, K)."""
        self.teacher_forward_calls += 1
        n_g = self.n_global_crops
        out = self.teacher.backbone.forward_features(global_crops)
        t_cls = out['x_norm_clstoken']
        t_patch = out['x_norm_patchtokens'].flatten(0, 1).index_select(0, mask_indices_list)
        if self.ibot_separate_head:
            t_cls_head = self.teacher.dino_head(t_cls)
            t_patch_head = self.teacher.ibot_head(t_patch)
        else:
            tokens = self.teacher.dino_head(torch.cat((t_cls, t_patch)))
            t_cls_head, t_patch_head = tokens[:t_cls.shape[0]], tokens[t_cls.shape[0]:]
        temp = self.teacher_temp
        if self.centering == 'sinkhorn_knopp':
            dino = self.dino_loss.sinkhorn_knopp_teacher(t_cls_head, temp)
            ibot = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                t_patch_head, temp, n_masked_patches_tensor=n_masked_patches)
        else:
            dino = self.dino_loss.softmax_center_teacher(t_cls_head, temp)
            self.dino_loss.update_center(t_cls_head)
            ibot = self.ibot_patch_loss.softmax_center_teacher(t_patch_head.unsqueeze(0),
                                                               temp).squeeze(0)
            if t_patch_head.shape[0] > 0:
                self.ibot_patch_loss.update_center(t_patch_head.unsqueeze(0))
        return dino.view(n_g, -1, dino.shape[-1]), ibot

    def loss(self,
             collated_global_crops: torch.Tensor,
             collated_masks: torch.Tensor,
             mask_indices_list: torch.Tensor,
             masks_weight: torch.Tensor,
             n_masked_patches: torch.Tensor,
             collated_local_crops: Optional[torch.Tensor] = None,
             **unused) -> Dict[str, torch.Tensor]:
        """Teacher once, then the DINOv3 losses of every student (prefixed by its name)."""
        first = next(iter(self.students.values()))
        global_crops, local_crops, masks, mask_indices_list = first._prepare_inputs(
            collated_global_crops, collated_local_crops, collated_masks, mask_indices_list)
        teacher_dino, teacher_ibot = self.teacher_targets(
            global_crops.to(next(self.teacher.parameters()).dtype), mask_indices_list,
            n_masked_patches)
        losses: Dict[str, torch.Tensor] = {}
        for name, student in self.students.items():
            terms = student.student_losses(global_crops, local_crops, masks, mask_indices_list,
                                           masks_weight, teacher_dino, teacher_ibot,
                                           mask_student_globals=False)
            losses.update({f'{name}.{k}': v for k, v in terms.items()})
        return losses

    def clip_gradients(self, optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """Unscale AMP gradients, then clip each student's sub-modules separately."""
        if not self.clip_grad:
            return {}
        unscale_amp_grads(optim_wrapper)
        norms = {}
        for name, student in self.students.items():
            norms.update(clip_grad_per_module(student.student.items(), self.clip_grad,
                                              prefix=f'{name}.'))
        return norms
