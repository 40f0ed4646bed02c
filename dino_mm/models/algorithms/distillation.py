"""Distillation of a frozen DINO teacher into smaller students (docs/reference.md §4.5-§4.6).

* :class:`DINOv3Distillation` — one student trained with the DINOv3 losses against the
  targets of a frozen, pretrained teacher (backbone + DINO head + iBOT head), the DINOv2
  / DINOv3 recipe for the released small models. An EMA of the student
  (``student_ema``) is kept for evaluation, like the official ``model_ema``.
* :class:`MultiDistillation` — DINOv3 multi-distillation: one frozen teacher, several
  students of different sizes trained in one job; the teacher runs once per batch and its
  targets feed every student. With ``ranks_range`` per student each student trains on its
  own ranks only (official ``MultiDistillationMetaArch``).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dino_mm.datasets.collate import mask_index_fields
from dino_mm.registry import MODELS
from dino_mm.utils.dist import all_gather_cat, get_rank, get_world_size
from ..losses import DINOLoss, iBOTPatchLoss
from .base import FrozenModuleDict, SSLMetaArch
from .dinov2 import _build
from .dinov3 import DINOv3, _v3_head

__all__ = ['DINOv3Distillation', 'MultiDistillation', 'build_frozen_teacher',
           'check_teacher_compatibility', 'check_rank_ranges']


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
                                name: str = 'DINOv3Distillation',
                                resolution_scale: float = 1.0) -> None:
    """Refuse a student that cannot learn from ``teacher``: head sizes (the student predicts
    the teacher's prototypes) and token grids (the iBOT masks index both): the student's
    token stride (a ViT's patch size, 32 for a ConvNeXt) must be the teacher's patch size
    times ``resolution_scale`` (the teacher sees crops downsampled by it)."""
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
    s_stride = student.student.backbone.token_stride
    t_patch = teacher.backbone.token_stride
    if s_stride != t_patch * resolution_scale:
        scale = ('' if resolution_scale == 1.0 else
                 f' x teacher_to_student_resolution_scale {resolution_scale:g}')
        hint = (f'; set teacher_to_student_resolution_scale={s_stride / t_patch:g} so that '
                'the downsampled teacher crops give the same grid' if s_stride > t_patch
                else '')
        raise ValueError(f'{name}: student patch size (token stride) {s_stride} differs from '
                         f'the teacher patch size {t_patch}{scale}; iBOT masks index both '
                         f'token grids{hint}.')


def check_rank_ranges(ranges: Dict[str, Optional[Sequence[int]]],
                      world_size: int) -> List[Tuple[str, int, int]]:
    """Check the students' ``ranks_range`` ``[start, end)`` against the world size.

    Every student needs a range; sorted by start they must tile ``[0, world_size)`` with no
    gap and no overlap (official ``multidistillation.students[*].ranks_range``).

    Returns:
        list: ``(name, start, end)`` in the order of ``ranges``.

    Raises:
        ValueError: A range is missing, malformed, or the ranges do not tile the ranks.
    """
    spans = []
    for name, span in ranges.items():
        ok = (isinstance(span, (list, tuple)) and len(span) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
              and 0 <= span[0] < span[1])
        if not ok:
            raise ValueError(
                f'MultiDistillation: student {name!r} has ranks_range={span!r}; with '
                'rank-partitioned students every student needs ranks_range=[start, end) '
                f'(0 <= start < end <= {world_size}), or remove ranks_range from all '
                'students to train every student on every rank.')
        spans.append((name, int(span[0]), int(span[1])))
    covered = 0
    for name, start, end in sorted(spans, key=lambda s: s[1]):
        if start != covered:
            raise ValueError(
                f'MultiDistillation: the students\' ranks_range must tile the {world_size} '
                f'ranks without gap or overlap; student {name!r} starts at rank {start}, '
                f'expected {covered} ({", ".join(f"{n}=[{a}, {b})" for n, a, b in spans)}).')
        covered = end
    if covered != world_size:
        raise ValueError(
            f'MultiDistillation: the students\' ranks_range cover ranks [0, {covered}), but '
            f'the job has {world_size} ranks; launch {covered} ranks or change the ranges '
            f'({", ".join(f"{n}=[{a}, {b})" for n, a, b in spans)}).')
    return spans


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

    Every iteration the teacher backbone and heads run **once** per batch; the
    Sinkhorn-Knopp (or softmax-centered) targets feed each student (a
    :class:`DINOv3Distillation` with ``external_teacher=True``, so each has its own
    backbone, heads, loss weights and EMA). Loss terms are logged per student as
    ``<name>.dino_local_crops_loss`` etc.

    Two layouts:

    * **Replicated** (no ``ranks_range``, or a single process): every rank holds every
      student and each student sees the rank's whole batch; the total loss is the sum of
      the students' losses (they share no parameter, so each gets its own gradient).
    * **Rank-partitioned** (every student has ``ranks_range=[start, end)`` and the job is
      launched with that many ranks; official ``MultiDistillationMetaArch``): a rank builds
      only the student whose range holds it. The teacher runs on the rank's own batch; its
      head inputs (the MLP output before ``last_layer``, far narrower than the logits) and
      the crops and masks are all-gathered, cut to ``global_batch_size``, and each student's
      ranks split that global batch between them, so **every student sees the whole global
      batch** per step, however many ranks it has. Targets are Sinkhorn-Knopp over the
      student's ranks (= the global batch); gradients are averaged over the student's ranks
      only (:class:`~dino_mm.engine.DINODistributedDataParallel` uses
      :attr:`ddp_process_group`); KoLeo is per rank, as in the official recipe. A student on
      ``n`` ranks thus costs ``n`` ranks: a ViT-S need not occupy the ranks of a ViT-L. The
      masks travel with their images (official: regenerated per rank for the local chunk;
      the distribution is the same). Checkpoints hold every student: the first rank of each
      student sends its weights and optimizer state to rank 0 when a checkpoint is written
      (:meth:`gather_partitioned_state`), and a resumed rank takes back its own
      (:meth:`select_partitioned_state`).

    Args:
        teacher (dict): ``dict(backbone=..., dino_head=..., ibot_head=...)`` of the teacher.
        students (dict[str, dict]): Per student name, the :class:`DINOv3Distillation`
            arguments (``backbone``, ``dino_head``, ``ibot_head``, loss weights ...) and
            optionally ``ranks_range=[start, end)``.
        teacher_ckpt (str, optional): Teacher training checkpoint (see
            :class:`DINOv3Distillation`).
        centering (str): 'sinkhorn_knopp' (official; required when rank-partitioned) or
            'centering'.
        teacher_temp (float): Initial teacher temperature (set by TeacherTempHook).
        center_momentum (float): For softmax centering. Defaults to 0.9.
        clip_grad (float, optional): Per student sub-module clipping. Defaults to 3.0.
        global_batch_size (int, optional): Rank-partitioned only: images per step over all
            ranks (official ``multidistillation.global_batch_size``); the gathered batch
            (per-rank batch x ranks, at least this) is cut to it. None: per-rank batch x
            ranks.
        teacher_to_student_resolution_scale (float): The teacher sees the global crops
            downsampled by this factor (bilinear, antialiased), the students see them as
            they are (official ``crops.teacher_to_student_resolution_scale``, 2.0 for the
            ConvNeXt students of a ViT/16 teacher: a ConvNeXt's tokens are 32 pixels apart,
            so both grids match). The iBOT masks are made for the students' grid (collate
            ``patch_size`` = the student token stride = teacher patch size x this factor,
            as the official collate). Defaults to 1.0.
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
                 global_batch_size: Optional[int] = None,
                 teacher_to_student_resolution_scale: float = 1.0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(centering=centering, teacher_temp=teacher_temp, clip_grad=clip_grad,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not teacher_to_student_resolution_scale > 0:
            raise ValueError('MultiDistillation: teacher_to_student_resolution_scale must be '
                             f'> 0, got {teacher_to_student_resolution_scale!r}.')
        self.resolution_scale = float(teacher_to_student_resolution_scale)
        if not students:
            raise ValueError('MultiDistillation needs at least one student in `students`.')
        self.teacher_ckpt = teacher_ckpt
        self.teacher = build_frozen_teacher(teacher)
        self.teacher_forward_calls = 0
        self.global_batch_size = global_batch_size
        students = {name: dict(cfg) for name, cfg in students.items()}
        students = self._partition(students, centering)
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
                                        f'MultiDistillation student {name!r}',
                                        self.resolution_scale)
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

    # ------------------------------------------------------------------ rank partition
    def _partition(self, students: Dict[str, dict], centering: str) -> Dict[str, dict]:
        """Set the rank layout; return the students this rank builds."""
        ranges = {name: cfg.pop('ranks_range', None) for name, cfg in students.items()}
        #: The student subgroup (None: replicated layout); DDP reduces gradients in it.
        self.ddp_process_group = None
        self.subgroup_rank, self.subgroup_size = 0, 1
        world = get_world_size()
        if world == 1 or all(span is None for span in ranges.values()):
            return students  # replicated (a single process builds every student)
        spans = check_rank_ranges(ranges, world)
        if centering != 'sinkhorn_knopp':
            raise ValueError("MultiDistillation: rank-partitioned students need "
                             "centering='sinkhorn_knopp' (the official recipe); softmax "
                             'centering would average centers over every student\'s ranks.')
        rank = get_rank()
        own = None
        for name, start, end in spans:  # every rank creates every group, in the same order
            group = dist.new_group(list(range(start, end)))
            if start <= rank < end:
                own = name
                self.ddp_process_group = group
                self.subgroup_rank, self.subgroup_size = rank - start, end - start
        return {own: students[own]}

    @property
    def partitioned(self) -> bool:
        """Whether each student trains on its own ranks only."""
        return self.ddp_process_group is not None

    def _gathered_batch(self, batch_size: int) -> Tuple[int, int]:
        """``(global batch, this rank's share)`` of the rank-partitioned layout."""
        world = get_world_size()
        gathered = batch_size * world
        total = self.global_batch_size or gathered
        name = next(iter(self.students))
        if total > gathered:
            raise ValueError(f'MultiDistillation: global_batch_size={total} exceeds the '
                             f'gathered batch ({batch_size} per rank x {world} ranks = '
                             f'{gathered}); raise train_dataloader.batch_size to at least '
                             f'{-(-total // world)}.')
        if total % self.subgroup_size:
            raise ValueError(f'MultiDistillation: the global batch of {total} images does not '
                             f'split evenly over the {self.subgroup_size} ranks of student '
                             f'{name!r}; choose a global batch that every ranks_range size '
                             'divides.')
        return total, total // self.subgroup_size

    def _my_share(self, tensor: torch.Tensor, n_crops: int, batch_size: int) -> torch.Tensor:
        """All-gather a crop-major (n_crops*B, ...) tensor; keep this rank's share."""
        total, share = self._gathered_batch(batch_size)
        bool_input = tensor.dtype == torch.bool
        tensor = tensor.to(torch.uint8) if bool_input else tensor  # (gloo has no bool)
        full = all_gather_cat(tensor.reshape(n_crops, batch_size, *tensor.shape[1:]), dim=1)
        mine = full.narrow(1, 0, total).narrow(1, self.subgroup_rank * share, share)
        mine = mine.flatten(0, 1)
        return mine.bool() if bool_input else mine

    @torch.no_grad()
    def partitioned_targets(
            self, inputs: Dict[str, Any]
    ) -> Tuple[Dict[str, Any], Dict[str, Optional[torch.Tensor]]]:
        """The teacher on this rank's batch; this rank's share of the global batch and its
        targets (see the class docstring).

        Returns:
            tuple: The student inputs (crops, masks and mask fields of the share) and
            ``dict(dino=..., ibot=...)`` targets for them.
        """
        self.teacher_forward_calls += 1
        n_g, batch_size = self.n_global_crops, inputs['batch_size']
        teacher = self.teacher
        crops = inputs['teacher_crops'].to(next(teacher.parameters()).dtype)
        out = teacher.backbone.forward_features(crops)
        masks = self._my_share(inputs['masks'], n_g, batch_size)
        fields = mask_index_fields(masks)
        # Exchange the head MLP outputs (bottleneck-wide), then apply the last layer to the
        # share only (official no_last_layer / only_last_layer).
        cls_proj = self._my_share(teacher.dino_head.project(out['x_norm_clstoken']), n_g,
                                  batch_size)
        t_cls_head = teacher.dino_head.last_layer(cls_proj)
        t_patch_head = None
        if self.do_ibot:
            head = teacher.ibot_head if self.ibot_separate_head else teacher.dino_head
            patch_proj = self._my_share(head.project(out['x_norm_patchtokens']), n_g,
                                        batch_size)
            masked = patch_proj.flatten(0, 1).index_select(0, fields['mask_indices_list'])
            t_patch_head = head.last_layer(masked)
        targets = self.targets_from_logits(t_cls_head, t_patch_head,
                                           fields['n_masked_patches'].to(masks.device),
                                           group=self.ddp_process_group)
        local = inputs['local_crops']
        if local is not None:
            local = self._my_share(local, inputs['n_local'], batch_size)
        student_inputs = dict(inputs, global_crops=self._my_share(inputs['global_crops'], n_g,
                                                                  batch_size),
                              local_crops=local, masks=masks, batch_size=masks.shape[0] // n_g,
                              **fields)
        return student_inputs, targets

    def _add_teacher_crops(self, inputs: Dict[str, Any]) -> None:
        """Set ``inputs['teacher_crops']``: the global crops downsampled by
        ``teacher_to_student_resolution_scale`` (bilinear, antialiased), the teacher's input,
        whose token grid then equals the students' (see the class docstring)."""
        crops = inputs['global_crops']
        student = next(iter(self.students.values())).student.backbone
        grid = (crops.shape[-2] // student.token_stride) * (crops.shape[-1] //
                                                            student.token_stride)
        if self.do_ibot and inputs['masks'].shape[1] != grid:
            raise ValueError(
                f'MultiDistillation: the {crops.shape[-2]}x{crops.shape[-1]} global crops give '
                f'the students {grid} patch tokens (token stride {student.token_stride}), but '
                f'the iBOT masks have {inputs["masks"].shape[1]}; set the collate patch_size '
                f'to {student.token_stride} (official: student patch size x '
                'teacher_to_student_resolution_scale).')
        if self.resolution_scale == 1.0:
            inputs['teacher_crops'] = crops
        else:
            inputs['teacher_crops'] = F.interpolate(
                crops.float(), scale_factor=1.0 / self.resolution_scale, mode='bilinear',
                antialias=True).to(crops.dtype)

    # ------------------------------------------------------------------ checkpoints
    def gather_partitioned_state(self, optim_wrapper) -> Optional[Dict[str, dict]]:
        """Collective (every rank calls it): on rank 0, every student's weights
        (``students.<name>.*`` keys) and optimizer state; None elsewhere and when not
        rank-partitioned. The weights of rank 0's own student are in the checkpoint
        already; they are sent again so that the layout is the same for every student."""
        if not self.partitioned:
            return None
        name = next(iter(self.students))
        part = None
        if self.subgroup_rank == 0:
            state = self.students[name].state_dict(prefix=f'students.{name}.')
            part = (name, {k: v.detach().cpu() for k, v in state.items()},
                    optim_wrapper.state_dict())
        parts = [None] * get_world_size() if get_rank() == 0 else None
        dist.gather_object(part, parts, dst=0)
        if parts is None:
            return None
        return {p[0]: dict(state_dict=p[1], optimizer=p[2]) for p in parts if p is not None}

    def select_partitioned_state(self, checkpoint: dict, resuming: bool) -> None:
        """Fit a loaded checkpoint of a rank-partitioned run to this rank (in place): keep
        the teacher and this rank's student, and take its optimizer state.

        Args:
            checkpoint (dict): The loaded checkpoint.
            resuming (bool): Whether the run resumes (and so loads the optimizer state) or
                only takes the weights (``load_from``).

        Raises:
            ValueError: A replicated run (every student on every rank) cannot resume the
                optimizer of a rank-partitioned one.
        """
        parts = checkpoint.get('partitioned_students')
        if not isinstance(parts, dict):
            return
        if not self.partitioned:
            if resuming:
                raise ValueError(
                    'MultiDistillation: this checkpoint was written by a rank-partitioned '
                    f'run (students {sorted(parts)}, each with its own optimizer); resume it '
                    'with the same ranks_range layout, or start from its weights with '
                    'load_from (no --resume).')
            return
        name = next(iter(self.students))
        if name not in parts:
            raise KeyError(f'MultiDistillation: the checkpoint has no state for student '
                           f'{name!r} (it has {sorted(parts)}).')
        others = tuple(f'students.{n}.' for n in parts if n != name)
        state = checkpoint.get('state_dict', {})
        for key in [k for k in state if k.replace('module.', '', 1).startswith(others)]:
            del state[key]
        checkpoint['optimizer'] = parts[name]['optimizer']

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
        """One teacher pass per batch; its targets feed every student.

        Rank-partitioned, ``inputs`` is updated in place to this rank's share of the global
        batch (crops, masks and mask fields), the batch the students then train on (see
        :meth:`partitioned_targets`).
        """
        self._add_teacher_crops(inputs)
        if self.partitioned:
            share, targets = self.partitioned_targets(inputs)
            inputs.update(share)
            return targets
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
