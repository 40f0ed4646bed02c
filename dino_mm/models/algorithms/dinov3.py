"""DINOv3 self-supervised meta-architecture (docs/reference.md §4.1-§4.3).

:class:`DINOv3` keeps the DINOv2 student / EMA-teacher wiring of :class:`DINOv2` and
changes the loss set: Sinkhorn-Knopp targets, separate iBOT head, plain-linear DINO
prototypes, ``global_ignore_diagonal`` global DINO loss, the v3 loss normalisation, KoLeo as
a mean over global crops times ``n_g``, and an optional frozen *Gram teacher* with the Gram
anchoring loss.

A stage that points at a missing or incompatible checkpoint (``gram_ckpt`` here,
``load_from`` in :class:`~dino_mm.engine.hooks.StageCheckpointHook`) fails before training,
through :func:`dino_mm.engine.checkpoint.check_checkpoint_compatibility`. The
high-resolution stage's data pieces (one crop-size triple per batch) live in
:mod:`dino_mm.datasets.multi_resolution`.
"""
import copy
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from dino_mm.registry import MODELS
from ..losses import KoLeoLossDistributed
from .base import FrozenModuleDict
from .dinov2 import DINOv2

__all__ = ['DINOv3']

_TOKENS_USED = ('all', 'masked', 'unmasked')


# ---------------------------------------------------------------------------- model
def _v3_head(cfg: Union[dict, nn.Module, None]) -> Union[dict, nn.Module, None]:
    # DINOv3 prototypes are a plain linear layer (official `head_norm_last_layer: false`).
    if isinstance(cfg, dict):
        return dict(dict(weight_norm_last_layer=False), **cfg)
    return cfg


@MODELS.register_module()
class DINOv3(DINOv2):
    """DINOv3 student / EMA teacher / optional Gram teacher with the DINOv3 losses.

    ``loss()`` (inherited: prepare, teacher, :meth:`compute_losses`) takes the
    :func:`~dino_mm.datasets.dino_collate` output (plus
    ``collated_gram_teacher_crops`` when the transform makes Gram crops) and returns the
    weighted summands ``dino_local_crops_loss``, ``dino_global_crops_loss``,
    ``koleo_loss``, ``ibot_loss`` and ``gram_loss``; their sum is the official total.

    Loss set (docs/reference.md §4.1): with ``n_g`` global and ``n_l`` local crops, DINO terms are
    *means* of the cross-entropy over all counted (sample, student crop, teacher crop)
    triples; the global term skips same-crop pairs when ``global_ignore_diagonal``; the
    two are combined with weights ``n_l*n_g / T`` and ``n_g*(n_g-1) / T`` (``T`` = their
    sum; 16/18 and 2/18 for 8 local crops). KoLeo is the mean over global crops of
    KoLeo(backbone class tokens), times ``koleo_loss_weight * n_g``. iBOT is the masked
    patch loss times ``ibot_loss_weight`` (no extra factor). The teacher targets are not
    crop-swapped: pairs are chosen explicitly.

    Gram anchoring (docs/reference.md §4.2): when ``gram_loss`` is set, a frozen
    ``gram_teacher`` (a :class:`FrozenModuleDict` ``(backbone=...)``, a copy of the teacher
    backbone) sees the Gram crops (or the global crops), its ``x_norm_patchtokens`` are
    resized (bicubic, no antialias) to the student patch grid when the Gram crops are
    larger, and
    ``gram_loss_weight * GramLoss(student global x_norm_patchtokens, teacher tokens)`` is
    added. The Gram teacher comes from ``gram_ckpt`` (loaded in :meth:`init_weights`) or
    from the EMA teacher (copied in :meth:`init_weights`, or by
    :class:`~dino_mm.engine.hooks.GramTeacherRefreshHook`).

    Args:
        backbone (dict | nn.Module): Student backbone (``dino_mm.DinoVisionTransformer``
            with a ``dinov3_*`` arch). The teacher copy is built without drop path.
        dino_head (dict): DINO head; ``weight_norm_last_layer`` defaults to False (v3).
        ibot_head (dict, optional): Separate iBOT head (official default); None shares the
            DINO head.
        dino_loss_weight (float): Defaults to 1.0.
        koleo_loss_weight (float): Defaults to 0.1.
        ibot_loss_weight (float): Defaults to 1.0.
        centering (str): 'sinkhorn_knopp' (official v3) or 'centering'.
        global_ignore_diagonal (bool): Skip same-crop pairs in the global DINO loss.
            Defaults to True.
        local_loss_weight (float): Extra factor of the local DINO term (official
            ``reweight_dino_local_loss`` + schedule; a
            :class:`~dino_mm.engine.hooks.LossWeightScheduleHook` may update it).
            Defaults to 1.0.
        gram_loss (dict, optional): ``dino_mm.GramLoss`` config; None disables Gram
            anchoring. Official: ``dict(apply_norm=True, remove_neg=False,
            remove_only_teacher_neg=False)``.
        gram_loss_weight (float): Weight (a schedule hook may update it). Defaults to 1.0.
        gram_img_level (bool): Per-image Gram matrices. Defaults to True.
        gram_tokens_used (str): 'all', 'masked' or 'unmasked' student/teacher patch tokens.
            With 'masked'/'unmasked' the selected tokens of the batch form one Gram matrix
            (their count differs per image). Defaults to 'all'.
        gram_ckpt (str, optional): Checkpoint for the Gram teacher backbone (a stage-1
            training checkpoint: ``teacher.backbone.*`` is used; a bare backbone file works
            too). None copies the EMA teacher.
        gram_ckpt_prefix (str, optional): Key prefix to read in ``gram_ckpt``; by default
            tried in order ``teacher.backbone.``, ``gram_teacher.backbone.``,
            ``backbone.``, ``''``.
        gram_resize_method (str): Interpolation of the Gram-teacher patch map.
            Defaults to 'bicubic'.
        gram_resize_antialias (bool): Defaults to False (official).
        koleo_loss_distributed (bool): Search KoLeo nearest neighbours in the batch gathered
            from all ranks (:class:`~dino_mm.models.losses.KoLeoLossDistributed`) instead
            of the per-rank batch (official ``dino.koleo_loss_distributed``; on in the 7B
            high-resolution stage only). Defaults to False.
        koleo_topk (int): Neighbours per row of the distributed KoLeo (official
            ``dino.koleo_topk``); must be 1 for the per-rank KoLeo. Defaults to 1.
        koleo_distributed_loss_group_size (int, optional): Rows per neighbour set of the
            distributed KoLeo (official ``dino.koleo_distributed_loss_group_size``); None:
            the global batch. Defaults to None.
        **kwargs: Other :class:`DINOv2` arguments (student_temp, center_momentum,
            teacher_temp, clip_grad, data_preprocessor, init_cfg).
    """

    head_local_first = False  # the official DINOv3 head call: global, local, patches

    #: iBOT masks the student's global crops (SSL); distillation shows them unmasked.
    mask_student_globals = True

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 dino_head: dict,
                 ibot_head: Optional[dict] = None,
                 dino_loss_weight: float = 1.0,
                 koleo_loss_weight: float = 0.1,
                 ibot_loss_weight: float = 1.0,
                 centering: str = 'sinkhorn_knopp',
                 global_ignore_diagonal: bool = True,
                 local_loss_weight: float = 1.0,
                 gram_loss: Optional[dict] = None,
                 gram_loss_weight: float = 1.0,
                 gram_img_level: bool = True,
                 gram_tokens_used: str = 'all',
                 gram_ckpt: Optional[str] = None,
                 gram_ckpt_prefix: Optional[str] = None,
                 gram_resize_method: str = 'bicubic',
                 gram_resize_antialias: bool = False,
                 koleo_loss_distributed: bool = False,
                 koleo_topk: int = 1,
                 koleo_distributed_loss_group_size: Optional[int] = None,
                 **kwargs) -> None:
        super().__init__(backbone=backbone, dino_head=_v3_head(dino_head),
                         ibot_head=_v3_head(ibot_head), dino_loss_weight=dino_loss_weight,
                         koleo_loss_weight=koleo_loss_weight,
                         ibot_loss_weight=ibot_loss_weight, centering=centering, **kwargs)
        if gram_tokens_used not in _TOKENS_USED:
            raise ValueError(f'DINOv3: gram_tokens_used must be one of {_TOKENS_USED}, got '
                             f'{gram_tokens_used!r}.')
        self.koleo_loss_distributed = koleo_loss_distributed
        if koleo_loss_distributed:
            if self.do_koleo:
                self.koleo_loss = KoLeoLossDistributed(
                    topk=koleo_topk, loss_group_size=koleo_distributed_loss_group_size)
        elif koleo_topk != 1 or koleo_distributed_loss_group_size is not None:
            raise ValueError(
                'DINOv3: koleo_topk / koleo_distributed_loss_group_size (got '
                f'{koleo_topk!r} / {koleo_distributed_loss_group_size!r}) only apply to the '
                'distributed KoLeo; set koleo_loss_distributed=True or leave them at 1 / None.')
        self.global_ignore_diagonal = global_ignore_diagonal
        self.local_loss_weight = local_loss_weight
        self.gram_loss_weight = gram_loss_weight
        self.gram_img_level = gram_img_level
        self.gram_tokens_used = gram_tokens_used
        self.gram_ckpt = gram_ckpt
        self.gram_ckpt_prefix = gram_ckpt_prefix
        self.gram_resize_method = gram_resize_method
        self.gram_resize_antialias = gram_resize_antialias
        self.use_gram = gram_loss is not None
        if self.use_gram:
            self.gram_loss = MODELS.build(dict(dict(type='dino_mm.GramLoss'), **gram_loss))
            self.gram_teacher = FrozenModuleDict(
                dict(backbone=copy.deepcopy(self.teacher.backbone)))

    # ------------------------------------------------------------------ gram teacher
    @torch.no_grad()
    def refresh_gram_teacher(self) -> None:
        """Copy the EMA teacher backbone into the Gram teacher (official refresh).

        Under :class:`dino_mm.DINOFSDPStrategy` both are sharded identically, so each rank
        copies its own shards (nothing is gathered).
        """
        if not self.use_gram:
            raise RuntimeError('DINOv3.refresh_gram_teacher: this model has no Gram teacher '
                               '(set model.gram_loss to enable Gram anchoring).')
        from dino_mm.engine.fsdp import reshard_fsdp
        reshard_fsdp(self.teacher.backbone, self.gram_teacher.backbone)
        self.gram_teacher.backbone.load_state_dict(self.teacher.backbone.state_dict(),
                                                   strict=True)

    def load_gram_teacher(self, path: str, prefix: Optional[str] = None) -> None:
        """Load the Gram teacher backbone from ``path`` after a compatibility check.

        Args:
            path (str): Training checkpoint of the previous stage or a backbone file.
            prefix (str, optional): Key prefix in the file; see ``gram_ckpt_prefix``.
        """
        from dino_mm.engine.checkpoint import check_checkpoint_compatibility
        prefixes = ((prefix, ) if prefix is not None else
                    ('teacher.backbone.', 'gram_teacher.backbone.', 'backbone.', ''))
        state = check_checkpoint_compatibility(
            path, self.gram_teacher.backbone.state_dict(), 'model.gram_ckpt', prefixes)
        self.gram_teacher.backbone.load_state_dict(state, strict=True)

    def init_weights(self) -> None:
        """Initialise student/teacher, then the Gram teacher (from ``gram_ckpt`` or EMA)."""
        super().init_weights()
        if self.use_gram:
            if self.gram_ckpt:
                self.load_gram_teacher(self.gram_ckpt, self.gram_ckpt_prefix)
            else:
                self.refresh_gram_teacher()

    # ------------------------------------------------------------------ losses
    def _dino_scales(self, n_g: int, n_l: int) -> Tuple[float, float]:
        global_terms = n_g * (n_g - 1) if self.global_ignore_diagonal else n_g * n_g
        local_terms = n_g * n_l
        total = global_terms + local_terms
        if n_l == 0:
            return 0.0, 1.0
        return local_terms / total, global_terms / total

    @torch.no_grad()
    def teacher_output(self, inputs: Dict[str, Any]) -> Dict[str, Optional[torch.Tensor]]:
        """The teacher's DINO / iBOT targets and, with Gram anchoring, ``gram``: the Gram
        teacher's patch tokens on the Gram crops (or the global crops) at the student's
        patch grid."""
        targets = super().teacher_output(inputs)
        if self.use_gram:
            global_crops = inputs['global_crops']
            gram_crops = global_crops if inputs['gram_crops'] is None else inputs['gram_crops']
            targets['gram'] = self.gram_targets(gram_crops, self._student_grid(global_crops))
        return targets

    @torch.no_grad()
    def gram_targets(self, gram_crops: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Gram-teacher patch tokens resized to the student patch grid, (N, h*w, D)."""
        out = self.gram_teacher.backbone.forward_features(gram_crops)
        tokens = out['x_norm_patchtokens']
        patch = self.gram_teacher.backbone.patch_size
        t_grid = (gram_crops.shape[-2] // patch, gram_crops.shape[-1] // patch)
        if t_grid != tuple(grid):
            n, _, dim = tokens.shape
            fmap = tokens.transpose(1, 2).reshape(n, dim, *t_grid)
            fmap = F.interpolate(fmap.float(), size=tuple(grid), mode=self.gram_resize_method,
                                 align_corners=False, antialias=self.gram_resize_antialias)
            tokens = fmap.flatten(2).transpose(1, 2).to(tokens.dtype)
        return tokens

    def compute_gram_loss(self, student_patches: torch.Tensor, teacher_patches: torch.Tensor,
                          masks: torch.Tensor) -> torch.Tensor:
        """Unweighted Gram loss for the configured token subset.

        Args:
            student_patches (torch.Tensor): (N, P, D) student ``x_norm_patchtokens``.
            teacher_patches (torch.Tensor): (N, P, D) Gram-teacher tokens (resized).
            masks (torch.Tensor): (N, P) bool iBOT masks.
        """
        if self.gram_tokens_used == 'all':
            return self.gram_loss(student_patches, teacher_patches, img_level=self.gram_img_level)
        select = masks if self.gram_tokens_used == 'masked' else ~masks
        return self.gram_loss(student_patches[select], teacher_patches[select],
                              img_level=False)

    def compute_losses(self, inputs: Dict[str, Any],
                       targets: Dict[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Student forward and the weighted DINOv3 loss terms for the teacher's ``targets``
        (``dino`` (n_g, B, K), ``ibot`` (M, K_ibot), optional ``gram`` (n_g*B, P, D)).

        Also what :class:`~dino_mm.models.algorithms.MultiDistillation` calls on each student
        with the shared teacher's targets.
        """
        n_g = self.n_global_crops
        batch_size, n_l = inputs['batch_size'], inputs['n_local']
        masks, mask_indices_list = inputs['masks'], inputs['mask_indices_list']
        teacher_dino = targets['dino']
        student = self.student_forward(inputs['global_crops'], inputs['local_crops'],
                                       masks if self.mask_student_globals else None,
                                       mask_indices_list)
        s_global = student['global_tokens']
        s_global_cls = s_global['x_norm_clstoken']

        losses: Dict[str, torch.Tensor] = {}
        if self.do_dino:
            local_scale, global_scale = self._dino_scales(n_g, n_l)
            s_global_head = student['global_head'].view(n_g, batch_size, -1)
            if n_l > 0:
                s_local_head = student['local_head'].view(n_l, batch_size, -1)
                dino_local = self.dino_loss.cross_entropy_mean(s_local_head, teacher_dino)
                losses['dino_local_crops_loss'] = (self.dino_loss_weight * local_scale *
                                                   self.local_loss_weight * dino_local)
            dino_global = self.dino_loss.cross_entropy_mean(
                s_global_head, teacher_dino, ignore_diagonal=self.global_ignore_diagonal)
            losses['dino_global_crops_loss'] = self.dino_loss_weight * global_scale * dino_global
            if self.do_koleo:
                koleo = sum(self.koleo_loss(cls) for cls in s_global_cls.chunk(n_g)) / n_g
                losses['koleo_loss'] = self.koleo_loss_weight * n_g * koleo
        if self.do_ibot:
            ibot = self.ibot_patch_loss.forward_masked(
                student['patch_head'], targets['ibot'], student_masks_flat=masks,
                n_masked_patches=mask_indices_list.shape[0],
                masks_weight=inputs['masks_weight'])
            losses['ibot_loss'] = self.ibot_loss_weight * ibot
        if targets.get('gram') is not None:
            gram = self.compute_gram_loss(s_global['x_norm_patchtokens'], targets['gram'], masks)
            losses['gram_loss'] = self.gram_loss_weight * gram
        return losses

    def _student_grid(self, global_crops: torch.Tensor) -> Tuple[int, int]:
        patch = self.student.backbone.patch_size
        return global_crops.shape[-2] // patch, global_crops.shape[-1] // patch
