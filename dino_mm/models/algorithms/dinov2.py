"""DINOv2 self-supervised meta-architecture as an MMEngine model
(docs/reference.md §3.2-§3.5).

A student (trained) and an EMA teacher, each an ``nn.ModuleDict`` with ``backbone``,
``dino_head`` and optionally ``ibot_head``. Attribute and key names follow the official
``SSLMetaArch`` so pretraining checkpoints hold ``student.backbone.*`` / ``teacher.backbone.*``.

Schedules that are not optimizer hyper-parameters live in hooks: the teacher temperature hook
sets :attr:`DINOv2.teacher_temp` before each iteration, the momentum hook calls
:meth:`DINOv2.update_teacher` after each optimizer step.
"""
import copy
from typing import Any, Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from torch import nn
from torch.nn.utils import clip_grad_norm_

from dino_mm.registry import MODELS
from ..losses import DINOLoss, iBOTPatchLoss, KoLeoLoss
from .optimization import SSLOptimizationMixin

_CENTERINGS = ('centering', 'sinkhorn_knopp')


def _build(cfg: Union[dict, nn.Module], what: str, **defaults) -> nn.Module:
    if isinstance(cfg, nn.Module):
        return copy.deepcopy(cfg)
    if not isinstance(cfg, dict):
        raise TypeError(f'DINOv2: `{what}` must be a config dict or an nn.Module, got '
                        f'{type(cfg).__name__}.')
    cfg = dict(cfg)
    for key, value in defaults.items():
        cfg.setdefault(key, value)
    return MODELS.build(cfg)



def unscale_amp_grads(optim_wrapper: OptimWrapper) -> None:
    """Undo the AMP loss scale on the gradients (once per step) before clipping them."""
    scaler = getattr(optim_wrapper, 'loss_scaler', None)
    if scaler is not None:
        scaler.unscale_(optim_wrapper.optimizer)


def clip_grad_per_module(named_modules, max_norm: float,
                         prefix: str = '') -> Dict[str, torch.Tensor]:
    """Clip each module's gradients separately, as the official trainer clips the student
    backbone, DINO head and iBOT head one by one (not all parameters together).

    Returns the pre-clipping norms as ``{prefix}grad_norm_{name}``.
    """
    norms = {}
    for name, module in named_modules:
        params = [p for p in module.parameters() if p.grad is not None]
        if params:
            norms[f'{prefix}grad_norm_{name}'] = clip_grad_norm_(params, max_norm)
    return norms


@MODELS.register_module()
class DINOv2(SSLOptimizationMixin, BaseModel):
    """DINOv2 student/teacher model with DINO, iBOT and KoLeo losses.

    ``forward(**batch, mode='loss')`` takes the official collate output
    (``collated_global_crops`` (n_g*B, 3, H, W) crop-major, ``collated_local_crops``
    (n_l*B, 3, h, w), ``collated_masks`` (n_g*B, N) bool, ``mask_indices_list`` (M,),
    ``masks_weight`` (M,), ``upperbound``, ``n_masked_patches`` (1,)) and returns the weighted
    loss terms ``dino_local_crops_loss``, ``dino_global_crops_loss``, ``koleo_loss`` and
    ``ibot_loss``; their sum is the official total loss. (The official logs show
    ``koleo_loss`` and ``ibot_loss`` halved and the DINO terms unweighted; here every logged
    term is the exact summand.)

    Args:
        backbone (dict | nn.Module): Student backbone config, e.g.
            ``dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitl14', img_size=224,
            drop_path_rate=0.3)``. The teacher is built from the same config with
            ``drop_path_rate=0`` (official) and starts as a copy of the student. A module is
            deep-copied for the teacher.
        dino_head (dict): DINO head config; ``type`` defaults to ``'dino_mm.DINOHead'`` and
            ``in_dim`` to the backbone ``embed_dim``. ``out_dim`` is the number of prototypes.
        ibot_head (dict, optional): Separate iBOT head config (official
            ``ibot.separate_head=True``); None shares the DINO head. Defaults to None.
        dino_loss_weight (float): Weight of both DINO terms. Defaults to 1.0.
        koleo_loss_weight (float): Weight of KoLeo (summed over the global crops).
            Defaults to 0.1.
        ibot_loss_weight (float): Weight of the iBOT loss. Defaults to 1.0.
        centering (str): Teacher targets, 'centering' (softmax-center) or 'sinkhorn_knopp'.
            Defaults to 'centering'.
        student_temp (float): Student temperature. Defaults to 0.1.
        center_momentum (float): EMA momentum of the softmax centers. Defaults to 0.9.
        teacher_temp (float): Initial teacher temperature (a hook overrides it each
            iteration). Defaults to 0.07.
        clip_grad (float, optional): Max gradient norm applied separately to each student
            sub-module (backbone, dino_head, ibot_head), after AMP unscaling. None or 0
            disables it (the optim wrapper's own ``clip_grad`` may then be used).
            Defaults to 3.0.
        data_preprocessor (dict, optional): Defaults to MMEngine's
            ``BaseDataPreprocessor`` (moves tensors to the model device only).
        init_cfg (dict, optional): MMEngine init config.
    """

    n_global_crops = 2  # the crop swap and loss scales of the official code assume two

    #: Order of the crops in the one student head call: the official DINOv2 code puts the
    #: local class tokens first, DINOv3 the global ones (kept for bit-equal parity).
    head_local_first = True

    def __init__(self,
                 backbone: Union[dict, nn.Module],
                 dino_head: dict,
                 ibot_head: Optional[dict] = None,
                 dino_loss_weight: float = 1.0,
                 koleo_loss_weight: float = 0.1,
                 ibot_loss_weight: float = 1.0,
                 centering: str = 'centering',
                 student_temp: float = 0.1,
                 center_momentum: float = 0.9,
                 teacher_temp: float = 0.07,
                 clip_grad: Optional[float] = 3.0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if centering not in _CENTERINGS:
            raise ValueError(f'DINOv2: centering must be one of {_CENTERINGS}, got '
                             f'{centering!r}.')
        if dino_loss_weight <= 0 and ibot_loss_weight <= 0:
            raise ValueError('DINOv2: at least one of dino_loss_weight / ibot_loss_weight must '
                             'be positive.')
        self.centering = centering
        self.dino_loss_weight = dino_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.ibot_loss_weight = ibot_loss_weight
        self.do_dino = dino_loss_weight > 0
        self.do_koleo = self.do_dino and koleo_loss_weight > 0
        self.do_ibot = ibot_loss_weight > 0
        self.ibot_separate_head = ibot_head is not None
        self.teacher_temp = teacher_temp
        self.clip_grad = clip_grad

        student_backbone = _build(backbone, 'backbone')
        if isinstance(backbone, dict):
            teacher_cfg = dict(backbone)
            if 'drop_path_rate' in teacher_cfg:
                teacher_cfg['drop_path_rate'] = 0.0
            teacher_backbone = _build(teacher_cfg, 'backbone')
        else:
            teacher_backbone = copy.deepcopy(student_backbone)
        embed_dim = getattr(student_backbone, 'embed_dim', None)
        if embed_dim is None:
            raise AttributeError('DINOv2: the backbone must expose `embed_dim` (the width of '
                                 "forward_features()['x_norm_clstoken']).")
        self.embed_dim = embed_dim

        head_defaults = dict(type='dino_mm.DINOHead', in_dim=embed_dim)
        if 'out_dim' not in dino_head:
            raise KeyError('DINOv2: dino_head needs `out_dim` (number of prototypes, official '
                           '`dino.head_n_prototypes`).')
        student = dict(backbone=student_backbone,
                       dino_head=_build(dino_head, 'dino_head', **head_defaults))
        teacher = dict(backbone=teacher_backbone,
                       dino_head=_build(dino_head, 'dino_head', **head_defaults))
        if self.ibot_separate_head:
            if 'out_dim' not in ibot_head:
                raise KeyError('DINOv2: ibot_head needs `out_dim` (official '
                               '`ibot.head_n_prototypes`).')
            student['ibot_head'] = _build(ibot_head, 'ibot_head', **head_defaults)
            teacher['ibot_head'] = _build(ibot_head, 'ibot_head', **head_defaults)
        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict(teacher)
        self._copy_student_to_teacher()
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.teacher.eval()

        self.dino_out_dim = dino_head['out_dim']
        self.ibot_out_dim = ibot_head['out_dim'] if self.ibot_separate_head else self.dino_out_dim
        # Same attribute names as the official meta-architecture (checkpoint keys
        # `dino_loss.center`, `ibot_patch_loss.center`).
        if self.do_dino:
            self.dino_loss = DINOLoss(self.dino_out_dim, student_temp, center_momentum)
        if self.do_koleo:
            self.koleo_loss = KoLeoLoss()
        if self.do_ibot:
            self.ibot_patch_loss = iBOTPatchLoss(self.ibot_out_dim, student_temp,
                                                 center_momentum)

    # ------------------------------------------------------------------ teacher
    def _copy_student_to_teacher(self) -> None:
        for key in self.student:
            self.teacher[key].load_state_dict(self.student[key].state_dict(), strict=True)

    def init_weights(self) -> None:
        """Initialise the student (and heads) and make the teacher an exact copy again."""
        super().init_weights()
        self._copy_student_to_teacher()

    def train(self, mode: bool = True) -> 'DINOv2':
        """Switch the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def ema_pairs(self) -> List[tuple]:
        """``(source, ema)`` module dicts that :meth:`update_teacher` blends, key by key.

        SSL: the student into the teacher. Distillation overrides it (the student into its
        EMA copy; the teacher is frozen).
        """
        return [(self.student, self.teacher)]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA ``ema = momentum * ema + (1 - momentum) * source`` over :meth:`ema_pairs`.

        One fused ``_foreach`` multiply-add over all parameters.

        Args:
            momentum (float): Teacher momentum for this iteration (0.992 -> 1 cosine).
        """
        source_params: List[torch.Tensor] = []
        ema_params: List[torch.Tensor] = []
        for source, ema in self.ema_pairs():
            for key in source:
                source_params += list(source[key].parameters())
                ema_params += list(ema[key].parameters())
        torch._foreach_mul_(ema_params, momentum)
        torch._foreach_add_(ema_params, source_params, alpha=1 - momentum)

    def student_backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """Student backbone weights in the official backbone layout (no prefix)."""
        return {k: v.detach().clone() for k, v in self.student.backbone.state_dict().items()}

    def teacher_backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """Teacher backbone weights in the official backbone layout (what is evaluated)."""
        return {k: v.detach().clone() for k, v in self.teacher.backbone.state_dict().items()}

    # ------------------------------------------------------------------ forward
    def forward(self,
                inputs: Optional[torch.Tensor] = None,
                data_samples: Optional[list] = None,
                mode: str = 'tensor',
                **batch) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        """MMEngine entry point.

        Args:
            inputs (torch.Tensor, optional): Images for ``mode='tensor'``.
            data_samples (list, optional): Unused.
            mode (str): 'loss' (takes the collate keys as keyword arguments) or 'tensor'
                (teacher backbone class tokens of ``inputs``, as used by kNN evaluation).
        """
        if mode == 'loss':
            return self.loss(**batch)
        if mode == 'tensor':
            if inputs is None:
                raise ValueError("DINOv2(mode='tensor') needs `inputs` (B, 3, H, W).")
            return self.extract_feat(inputs)
        raise ValueError(f"DINOv2 supports mode='loss' and mode='tensor', got {mode!r}; "
                         'evaluate features with mode="tensor" (e.g. a kNN evaluation hook).')

    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised class tokens of the teacher backbone, shape (B, D)."""
        inputs = inputs.to(self._param_dtype())
        return self.teacher.backbone.forward_features(inputs)['x_norm_clstoken']

    def _param_dtype(self) -> torch.dtype:
        return next(self.student.backbone.parameters()).dtype

    def _prepare_inputs(self, collated_global_crops, collated_local_crops, collated_masks,
                        mask_indices_list):
        """Check the collated batch and cast the crops to the parameters' dtype.

        The official collate casts crops to fp16 for its FSDP mixed precision; without an
        autocast context a half input would not match fp32 weights.

        Returns:
            tuple: ``(global_crops, local_crops or None, masks (bool), mask_indices_list
            (long))``.
        """
        n_g = self.n_global_crops
        dtype = self._param_dtype()
        global_crops = collated_global_crops.to(dtype)
        if global_crops.shape[0] % n_g:
            raise ValueError(f'{type(self).__name__}: collated_global_crops must hold 2 crops '
                             f'per image (crop-major), got {global_crops.shape[0]} images.')
        batch_size = global_crops.shape[0] // n_g
        local_crops = None
        if collated_local_crops is not None and collated_local_crops.numel() > 0:
            if collated_local_crops.shape[0] % batch_size:
                raise ValueError(f'{type(self).__name__}: collated_local_crops has '
                                 f'{collated_local_crops.shape[0]} images, not a multiple of '
                                 f'the batch size {batch_size}.')
            local_crops = collated_local_crops.to(dtype)
        masks = collated_masks.bool()
        if masks.shape[0] != global_crops.shape[0]:
            raise ValueError(f'{type(self).__name__}: collated_masks has {masks.shape[0]} '
                             f'rows, expected one per global crop ({global_crops.shape[0]}).')
        return global_crops, local_crops, masks, mask_indices_list.long()

    def student_forward(self, global_crops: torch.Tensor,
                        local_crops: Optional[torch.Tensor], masks: Optional[torch.Tensor],
                        mask_indices_list: torch.Tensor) -> Dict[str, Any]:
        """The student pass every variant shares: backbone on all crops, one head call.

        The global crops (with ``masks`` on their patch tokens, None for no masking) and the
        local crops go through the backbone in one ``forward_features`` list call; the class
        tokens of both and, for iBOT with a shared head, the masked patch tokens go through
        the DINO head in one call (the official block-diagonal concatenation), in the order
        :attr:`head_local_first` gives.

        Returns:
            dict: ``global_tokens`` / ``local_tokens`` (the backbone outputs; local None
            without local crops), ``global_head`` / ``local_head`` (flat head outputs,
            crop-major) and ``patch_head`` (the masked tokens' iBOT head output or None).
        """
        if local_crops is not None:
            s_global, s_local = self.student.backbone.forward_features(
                [global_crops, local_crops], masks=[masks, None])
        else:
            s_global, s_local = self.student.backbone.forward_features(
                global_crops, masks=masks), None
        # (name, tokens) in the official order of the one head call
        head_inputs = [('global_head', s_global['x_norm_clstoken'])]
        if s_local is not None:
            head_inputs.insert(0 if self.head_local_first else 1,
                               ('local_head', s_local['x_norm_clstoken']))
        out = dict(global_tokens=s_global, local_tokens=s_local, local_head=None,
                   patch_head=None)
        if self.do_ibot:
            s_patch = s_global['x_norm_patchtokens'].flatten(0, 1).index_select(
                0, mask_indices_list)
            if self.ibot_separate_head:
                out['patch_head'] = self.student.ibot_head(s_patch)
            else:
                head_inputs.append(('patch_head', s_patch))
        head_out = self.student.dino_head(torch.cat([t for _, t in head_inputs])).split(
            [t.shape[0] for _, t in head_inputs])
        out.update(zip([name for name, _ in head_inputs], head_out))
        return out

    def loss(self,
             collated_global_crops: torch.Tensor,
             collated_masks: torch.Tensor,
             mask_indices_list: torch.Tensor,
             masks_weight: torch.Tensor,
             n_masked_patches: torch.Tensor,
             collated_local_crops: Optional[torch.Tensor] = None,
             upperbound: Optional[int] = None,
             **unused) -> Dict[str, torch.Tensor]:
        """Official DINOv2 iteration loss (see the class docstring for the inputs).

        ``upperbound`` (the official static buffer size) is accepted and ignored: gathering
        exactly the masked tokens gives the same numbers without padding.
        """
        n_g = self.n_global_crops
        global_crops, local_crops, masks, mask_indices_list = self._prepare_inputs(
            collated_global_crops, collated_local_crops, collated_masks, mask_indices_list)
        batch_size = global_crops.shape[0] // n_g
        n_l = 0 if local_crops is None else local_crops.shape[0] // batch_size
        n_masked = mask_indices_list.shape[0]
        # Official normalisers; max(., 1) keeps the global term finite without local crops.
        n_terms = max(n_l * n_g, 1) + (n_g - 1) * n_g
        loss_scale = 2  # the two global crops are processed together

        teacher_dino, teacher_ibot = self._teacher_targets(global_crops, mask_indices_list,
                                                           n_masked_patches)

        student = self.student_forward(global_crops, local_crops, masks, mask_indices_list)
        s_global_cls = student['global_tokens']['x_norm_clstoken']
        s_local_head, s_global_head = student['local_head'], student['global_head']
        s_patch_head = student['patch_head']

        losses: Dict[str, torch.Tensor] = {}
        if self.do_dino:
            if n_l > 0:
                dino_local = self.dino_loss(s_local_head.chunk(n_l), teacher_dino) / n_terms
                losses['dino_local_crops_loss'] = self.dino_loss_weight * dino_local
            # Teacher targets were swapped, so crop A is matched to crop B only.
            dino_global = self.dino_loss([s_global_head], [teacher_dino.flatten(0, 1)])
            losses['dino_global_crops_loss'] = (self.dino_loss_weight * dino_global *
                                                loss_scale / n_terms)
            if self.do_koleo:
                # Per crop: never push apart the two views of the same image.
                koleo = sum(self.koleo_loss(cls) for cls in s_global_cls.chunk(n_g))
                losses['koleo_loss'] = self.koleo_loss_weight * koleo
        if self.do_ibot:
            ibot = self.ibot_patch_loss.forward_masked(
                s_patch_head, teacher_ibot, student_masks_flat=masks,
                n_masked_patches=n_masked, masks_weight=masks_weight)
            losses['ibot_loss'] = self.ibot_loss_weight * ibot * loss_scale / n_g
        return losses

    @torch.no_grad()
    def _teacher_targets(self, global_crops: torch.Tensor, mask_indices_list: torch.Tensor,
                         n_masked_patches: torch.Tensor):
        n_g = self.n_global_crops
        out = self.teacher.backbone.forward_features(global_crops)
        cls_a, cls_b = out['x_norm_clstoken'].chunk(n_g)
        # Swapped so that student crop A is compared with teacher crop B (docs/reference.md §6.2).
        t_cls = torch.cat((cls_b, cls_a))
        n_cls = t_cls.shape[0]
        t_patch_head = None
        if self.do_ibot:
            t_patch = out['x_norm_patchtokens'].flatten(0, 1).index_select(0, mask_indices_list)
            if self.ibot_separate_head:
                t_cls_head = self.teacher.dino_head(t_cls)
                t_patch_head = self.teacher.ibot_head(t_patch)
            else:
                tokens = self.teacher.dino_head(torch.cat((t_cls, t_patch)))
                t_cls_head, t_patch_head = tokens[:n_cls], tokens[n_cls:]
        else:
            t_cls_head = self.teacher.dino_head(t_cls)

        teacher_dino = teacher_ibot = None
        temp = self.teacher_temp
        if self.centering == 'centering':
            if self.do_dino:
                teacher_dino = self.dino_loss.softmax_center_teacher(t_cls_head, temp)
                self.dino_loss.update_center(t_cls_head)
            if self.do_ibot:
                teacher_ibot = self.ibot_patch_loss.softmax_center_teacher(
                    t_patch_head.unsqueeze(0), temp).squeeze(0)
                # An empty batch of masked tokens would turn the center into NaN.
                if t_patch_head.shape[0] > 0:
                    self.ibot_patch_loss.update_center(t_patch_head.unsqueeze(0))
        else:
            if self.do_dino:
                teacher_dino = self.dino_loss.sinkhorn_knopp_teacher(t_cls_head, temp)
            if self.do_ibot:
                teacher_ibot = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                    t_patch_head, temp, n_masked_patches_tensor=n_masked_patches)
        if teacher_dino is not None:
            teacher_dino = teacher_dino.view(n_g, -1, teacher_dino.shape[-1])
        return teacher_dino, teacher_ibot

    # ------------------------------------------------------------------ optimisation
    def clip_gradients(self, optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """Unscale AMP gradients, then clip each student sub-module to ``clip_grad``.

        Returns:
            dict: Pre-clipping gradient norm per sub-module (``grad_norm_<name>``).
        """
        if not self.clip_grad:
            return {}
        unscale_amp_grads(optim_wrapper)
        return clip_grad_per_module(self.student.items(), self.clip_grad)
