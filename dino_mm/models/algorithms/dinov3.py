"""DINOv3 self-supervised meta-architecture (docs/reference.md §4.1-§4.3).

:class:`DINOv3` keeps the DINOv2 student / EMA-teacher wiring of :class:`DINOv2` and
changes the loss set: Sinkhorn-Knopp targets, separate iBOT head, plain-linear DINO
prototypes, ``global_ignore_diagonal`` global DINO loss, the v3 loss normalisation, KoLeo as
a mean over global crops times ``n_g``, and an optional frozen *Gram teacher* with the Gram
anchoring loss.

The module also holds the small pieces the three official stages need besides the model:

* :func:`check_checkpoint_compatibility` — fail before training when a stage points at a
  missing or incompatible checkpoint (used by the model for ``gram_ckpt`` and by
  :class:`~dino_mm.engine.hooks.StageCheckpointHook` for ``load_from``).

The high-resolution stage's data pieces (one crop-size triple per batch) live in
:mod:`dino_mm.datasets.multi_resolution`.
"""
import copy
import os.path as osp
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from dino_mm.registry import MODELS
from ..losses import KoLeoLossDistributed
from .dinov2 import DINOv2

__all__ = ['DINOv3', 'check_checkpoint_compatibility', 'load_checkpoint_state']

_TOKENS_USED = ('all', 'masked', 'unmasked')


# ---------------------------------------------------------------------------- checkpoints
def load_checkpoint_state(path: str, what: str) -> Dict[str, torch.Tensor]:
    """Read the state dict of a training or backbone checkpoint with a clear error.

    Accepts MMEngine checkpoints (``state_dict``), official DINO teacher dumps
    (``teacher``), ``model`` dicts and bare state dicts.

    Args:
        path (str): Checkpoint file.
        what (str): What the file is for (e.g. ``'model.gram_ckpt'``), used in errors.
    """
    from dino_mm.engine.checkpoint import safe_torch_load
    if not path or not osp.isfile(str(path)):
        raise FileNotFoundError(
            f'{what}: checkpoint file "{path}" does not exist. Point it at the checkpoint '
            'written by the previous stage (e.g. work_dirs/<stage>/iter_<N>.pth) or run that '
            'stage first.')
    ckpt = safe_torch_load(str(path), map_location='cpu')
    if isinstance(ckpt, Mapping):
        for key in ('state_dict', 'teacher', 'model'):
            if isinstance(ckpt.get(key), Mapping):
                return dict(ckpt[key])
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return dict(ckpt)
    raise ValueError(f'{what}: "{path}" holds no state dict (expected a dict with '
                     "'state_dict', 'teacher' or 'model', or a dict of tensors).")


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_checkpoint_compatibility(path: str,
                                   target: Mapping[str, torch.Tensor],
                                   what: str,
                                   prefixes: Sequence[str] = ('', ),
                                   ignore_missing: Sequence[str] = (),
                                   max_listed: int = 5) -> Dict[str, torch.Tensor]:
    """Check that checkpoint ``path`` can be loaded strictly into ``target``.

    The first prefix of ``prefixes`` under which the checkpoint holds keys of ``target``
    is used (e.g. ``'teacher.backbone.'`` to take a backbone out of a training
    checkpoint). Keys of ``target`` that start with one of ``ignore_missing`` may be
    absent (e.g. ``gram_teacher.`` when stage 2 starts from a stage-1 checkpoint).

    Args:
        path (str): Checkpoint file.
        target (Mapping[str, torch.Tensor]): State dict of the receiving module.
        what (str): Name of the config entry, for the error message.
        prefixes (Sequence[str]): Candidate key prefixes in the checkpoint.
        ignore_missing (Sequence[str]): Target key prefixes that may be missing.
        max_listed (int): Mismatching keys listed in the error. Defaults to 5.

    Returns:
        dict: The checkpoint entries, prefix stripped, ready for ``load_state_dict``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Missing / unexpected keys or shape mismatches (a few listed).
    """
    state = load_checkpoint_state(path, what)
    chosen, sub = prefixes[0], {}
    for prefix in prefixes:
        sub = _strip(state, prefix)
        if set(sub) & set(target):
            chosen = prefix
            break
    missing = [k for k in target if k not in sub and not k.startswith(tuple(ignore_missing))]
    unexpected = [k for k in sub if k not in target]
    mismatched = [(k, tuple(sub[k].shape), tuple(target[k].shape)) for k in target
                  if k in sub and tuple(sub[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f'{what}: checkpoint "{path}" does not match the model'
                 f'{" (keys under prefix " + repr(chosen) + ")" if chosen else ""}:']
        if mismatched:
            lines.append(f'  {len(mismatched)} shape mismatches, e.g. ' + '; '.join(
                f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:max_listed]))
        if missing:
            lines.append(f'  {len(missing)} keys missing from the checkpoint, e.g. ' +
                         ', '.join(missing[:max_listed]))
        if unexpected:
            lines.append(f'  {len(unexpected)} unexpected keys, e.g. ' +
                         ', '.join(unexpected[:max_listed]))
        lines.append('  The previous stage must use the same architecture (embed_dim, depth, '
                     'heads, patch size, storage tokens, head sizes); fix the config or point '
                     'at the right file.')
        raise ValueError('\n'.join(lines))
    return sub


# ---------------------------------------------------------------------------- model
def _v3_head(cfg: Union[dict, nn.Module, None]) -> Union[dict, nn.Module, None]:
    # DINOv3 prototypes are a plain linear layer (official `head_norm_last_layer: false`).
    if isinstance(cfg, dict):
        return dict(dict(weight_norm_last_layer=False), **cfg)
    return cfg


@MODELS.register_module()
class DINOv3(DINOv2):
    """DINOv3 student / EMA teacher / optional Gram teacher with the DINOv3 losses.

    ``loss()`` takes the :func:`~dino_mm.datasets.dino_collate` output (plus
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

    Gram anchoring (docs/reference.md §4.2): when ``gram_loss`` is set, a frozen ``gram_teacher``
    (``nn.ModuleDict(backbone=...)``, a copy of the teacher backbone) sees the Gram crops
    (or the global crops), its ``x_norm_patchtokens`` are resized (bicubic, no antialias)
    to the student patch grid when the Gram crops are larger, and
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
            self.gram_teacher = nn.ModuleDict(
                dict(backbone=copy.deepcopy(self.teacher.backbone)))
            for param in self.gram_teacher.parameters():
                param.requires_grad = False
            self.gram_teacher.eval()

    # ------------------------------------------------------------------ gram teacher
    def train(self, mode: bool = True) -> 'DINOv3':
        """Switch the student's mode; teacher and Gram teacher stay in eval mode."""
        super().train(mode)
        if self.use_gram:
            # Eval mode also switches off the RoPE train-time coordinate augmentation.
            self.gram_teacher.eval()
        return self

    @torch.no_grad()
    def refresh_gram_teacher(self) -> None:
        """Copy the EMA teacher backbone into the Gram teacher (official refresh)."""
        if not self.use_gram:
            raise RuntimeError('DINOv3.refresh_gram_teacher: this model has no Gram teacher '
                               '(set model.gram_loss to enable Gram anchoring).')
        self.gram_teacher.backbone.load_state_dict(self.teacher.backbone.state_dict(),
                                                   strict=True)

    def load_gram_teacher(self, path: str, prefix: Optional[str] = None) -> None:
        """Load the Gram teacher backbone from ``path`` after a compatibility check.

        Args:
            path (str): Training checkpoint of the previous stage or a backbone file.
            prefix (str, optional): Key prefix in the file; see ``gram_ckpt_prefix``.
        """
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
    def teacher_targets(self, global_crops: torch.Tensor, mask_indices_list: torch.Tensor,
                        n_masked_patches: torch.Tensor):
        """Teacher targets: DINO (n_g, B, K) in crop order and iBOT (M, K_ibot)."""
        teacher_dino, teacher_ibot = self._teacher_targets(global_crops, mask_indices_list,
                                                           n_masked_patches)
        if teacher_dino is not None:
            # The DINOv2 helper swaps the two crop halves for its loss; DINOv3 picks pairs
            # explicitly (ignore_diagonal), so restore crop order. Both centerings treat
            # samples symmetrically, so the swap does not change the targets themselves.
            teacher_dino = teacher_dino.flip(0)
        return teacher_dino, teacher_ibot

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

    def student_losses(self,
                       global_crops: torch.Tensor,
                       local_crops: Optional[torch.Tensor],
                       masks: torch.Tensor,
                       mask_indices_list: torch.Tensor,
                       masks_weight: torch.Tensor,
                       teacher_dino: Optional[torch.Tensor],
                       teacher_ibot: Optional[torch.Tensor],
                       gram_teacher_patches: Optional[torch.Tensor] = None,
                       mask_student_globals: bool = True) -> Dict[str, torch.Tensor]:
        """Student forward and the weighted DINOv3 loss terms for given teacher targets.

        Split out of :meth:`loss` so distillation models can feed one teacher's targets to
        several students.

        Args:
            global_crops (torch.Tensor): (n_g*B, 3, H, W) crop-major.
            local_crops (torch.Tensor, optional): (n_l*B, 3, h, w) or None.
            masks (torch.Tensor): (n_g*B, P) bool iBOT masks.
            mask_indices_list (torch.Tensor): Flat indices of the masked tokens.
            masks_weight (torch.Tensor): Per masked token weight.
            teacher_dino (torch.Tensor, optional): (n_g, B, K) DINO targets.
            teacher_ibot (torch.Tensor, optional): (M, K_ibot) iBOT targets.
            gram_teacher_patches (torch.Tensor, optional): (n_g*B, P, D) Gram targets.
            mask_student_globals (bool): Apply the masks to the student global crops
                (SSL) or not (official distillation). Defaults to True.
        """
        n_g = self.n_global_crops
        batch_size = global_crops.shape[0] // n_g
        n_l = 0 if local_crops is None else local_crops.shape[0] // batch_size
        student_masks = masks if mask_student_globals else None
        student = self.student_forward(global_crops, local_crops, student_masks,
                                       mask_indices_list)
        s_global = student['global_tokens']
        s_global_cls = s_global['x_norm_clstoken']
        s_patch_head = student['patch_head']

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
                s_patch_head, teacher_ibot, student_masks_flat=masks,
                n_masked_patches=mask_indices_list.shape[0], masks_weight=masks_weight)
            losses['ibot_loss'] = self.ibot_loss_weight * ibot
        if gram_teacher_patches is not None:
            gram = self.compute_gram_loss(s_global['x_norm_patchtokens'], gram_teacher_patches,
                                          masks)
            losses['gram_loss'] = self.gram_loss_weight * gram
        return losses

    def _student_grid(self, global_crops: torch.Tensor) -> Tuple[int, int]:
        patch = self.student.backbone.patch_size
        return global_crops.shape[-2] // patch, global_crops.shape[-1] // patch

    def loss(self,
             collated_global_crops: torch.Tensor,
             collated_masks: torch.Tensor,
             mask_indices_list: torch.Tensor,
             masks_weight: torch.Tensor,
             n_masked_patches: torch.Tensor,
             collated_local_crops: Optional[torch.Tensor] = None,
             upperbound: Optional[int] = None,
             collated_gram_teacher_crops: Optional[torch.Tensor] = None,
             **unused) -> Dict[str, torch.Tensor]:
        """Official DINOv3 iteration loss (inputs as in :meth:`DINOv2.loss`).

        Args:
            collated_gram_teacher_crops (torch.Tensor, optional): (n_g*B, 3, H', W') Gram
                crops; the global crops are used when absent.
        """
        global_crops, local_crops, masks, mask_indices_list = self._prepare_inputs(
            collated_global_crops, collated_local_crops, collated_masks, mask_indices_list)
        teacher_dino, teacher_ibot = self.teacher_targets(global_crops, mask_indices_list,
                                                          n_masked_patches)
        gram_patches = None
        if self.use_gram:
            gram_crops = (global_crops if collated_gram_teacher_crops is None else
                          collated_gram_teacher_crops.to(global_crops.dtype))
            gram_patches = self.gram_targets(gram_crops, self._student_grid(global_crops))
        return self.student_losses(global_crops, local_crops, masks, mask_indices_list,
                                   masks_weight, teacher_dino, teacher_ibot, gram_patches)
