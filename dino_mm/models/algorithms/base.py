"""The one self-supervised meta-architecture every DINO algorithm extends
(docs/architecture.md).

:class:`SSLMetaArch` owns the wiring of an iteration, as the official ``SSLMetaArch`` does::

    inputs  = prepare_inputs(**batch)        # check and cast the collated crops and masks
    targets = teacher_output(inputs)         # teacher on the global crops, in crop order
    losses  = compute_losses(inputs, targets)

A variant overrides :meth:`compute_losses` (its loss set) and, when it needs more targets,
:meth:`teacher_output` (Gram anchoring adds the Gram teacher's patch tokens). The base also
owns what every variant shares: the train step with its non-finite stop and per-module
gradient clipping (:class:`~.optimization.SSLOptimizationMixin`), the EMA of the students
(:meth:`update_teacher` over :meth:`ema_pairs`), the rule that frozen components stay in eval
mode (:class:`FrozenModuleDict`), and the features the kNN evaluation reads
(:meth:`extract_feat`).
"""
from abc import abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from torch import nn

from .optimization import SSLOptimizationMixin, clip_grad_per_module, unscale_amp_grads

__all__ = ['FrozenModuleDict', 'SSLMetaArch']

CENTERINGS = ('centering', 'sinkhorn_knopp')


class FrozenModuleDict(nn.ModuleDict):
    """A component that never trains: no gradients and always in eval mode.

    The EMA teacher of SSL, the student EMA of distillation, the Gram teacher and the
    pretrained teacher of distillation are such components; their values change only through
    the EMA update or by loading a checkpoint. ``train(True)`` leaves them in eval mode, which
    keeps drop path and the RoPE train-time coordinate augmentation off, as the official code
    runs its teachers.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__(modules)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> 'FrozenModuleDict':
        return super().train(False)


class SSLMetaArch(SSLOptimizationMixin, BaseModel):
    """Base of the DINO self-supervised models: the iteration wiring and the shared steps.

    Subclasses provide the modules and the loss set:

    * ``self.teacher`` — the module dict (``backbone``, ``dino_head``[, ``ibot_head``]) whose
      outputs are the targets: the EMA teacher in SSL, the frozen pretrained teacher in
      distillation;
    * the target makers ``self.dino_loss`` / ``self.ibot_patch_loss`` (their centers or
      Sinkhorn-Knopp) and the flags ``do_dino``, ``do_ibot``, ``ibot_separate_head``;
    * :meth:`compute_losses`.

    Single-student models hold ``self.student`` and its EMA under :attr:`ema_name`; the
    defaults of :meth:`trained_students` and :meth:`ema_pairs` read them, and a model with
    several students overrides both.

    Args:
        centering (str): Teacher targets, 'centering' (softmax-center) or 'sinkhorn_knopp'.
        teacher_temp (float): Initial teacher temperature (TeacherTempHook updates it).
        clip_grad (float, optional): Max gradient norm applied separately to each student
            sub-module, after AMP unscaling; None or 0 disables it.
        data_preprocessor (dict, optional): MMEngine data preprocessor config.
        init_cfg (dict, optional): MMEngine init config.
    """

    #: The crop swap and loss scales of the official code assume two global crops.
    n_global_crops = 2

    #: The EMA component that :meth:`ema_pairs` blends the student into and that
    #: :meth:`extract_feat` evaluates: ``teacher`` in SSL, ``student_ema`` in distillation
    #: (official ``model_ema``), where ``teacher`` is the frozen pretrained model.
    ema_name = 'teacher'

    def __init__(self,
                 centering: str = 'centering',
                 teacher_temp: float = 0.07,
                 clip_grad: Optional[float] = 3.0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if centering not in CENTERINGS:
            raise ValueError(f'{type(self).__name__}: centering must be one of {CENTERINGS}, '
                             f'got {centering!r}.')
        self.centering = centering
        self.teacher_temp = teacher_temp
        self.clip_grad = clip_grad

    # ------------------------------------------------------------------ what is trained
    def trained_students(self) -> List[Tuple[str, nn.ModuleDict]]:
        """``(log prefix, student module dict)`` of every trained student."""
        return [('', self.student)]

    def ema_pairs(self) -> List[Tuple[nn.ModuleDict, nn.ModuleDict]]:
        """``(source, ema)`` module dicts that :meth:`update_teacher` blends, key by key."""
        return [(self.student, getattr(self, self.ema_name))]

    def _param_dtype(self) -> torch.dtype:
        return next(self.trained_students()[0][1].parameters()).dtype

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA ``ema = momentum * ema + (1 - momentum) * source`` over :meth:`ema_pairs`.

        One fused ``_foreach`` multiply-add over all parameters.

        Args:
            momentum (float): Momentum for this iteration (official: 0.992 -> 1, cosine).
        """
        source_params: List[torch.Tensor] = []
        ema_params: List[torch.Tensor] = []
        for source, ema in self.ema_pairs():
            for key in source:
                source_params += list(source[key].parameters())
                ema_params += list(ema[key].parameters())
        torch._foreach_mul_(ema_params, momentum)
        torch._foreach_add_(ema_params, source_params, alpha=1 - momentum)

    def clip_gradients(self, optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """Unscale AMP gradients, then clip each student sub-module to ``clip_grad``.

        Returns:
            dict: Pre-clipping norm per sub-module, ``<prefix>grad_norm_<name>``.
        """
        if not self.clip_grad:
            return {}
        unscale_amp_grads(optim_wrapper)
        norms = {}
        for prefix, student in self.trained_students():
            norms.update(clip_grad_per_module(student.items(), self.clip_grad, prefix=prefix))
        return norms

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised class tokens of the EMA backbone (what is evaluated), (B, D)."""
        inputs = inputs.to(self._param_dtype())
        ema = getattr(self, self.ema_name)
        return ema.backbone.forward_features(inputs)['x_norm_clstoken']

    def student_backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """Student backbone weights in the official backbone layout (no prefix)."""
        return {k: v.detach().clone() for k, v in self.student.backbone.state_dict().items()}

    def eval_backbone_state_dict(self) -> Dict[str, torch.Tensor]:
        """EMA backbone weights in the official backbone layout: what is evaluated and
        released (the teacher in SSL, the student EMA in distillation)."""
        ema = getattr(self, self.ema_name)
        return {k: v.detach().clone() for k, v in ema.backbone.state_dict().items()}

    # ------------------------------------------------------------------ the iteration
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
                (:meth:`extract_feat` of ``inputs``, as the kNN evaluation uses).
        """
        name = type(self).__name__
        if mode == 'loss':
            return self.loss(**batch)
        if mode == 'tensor':
            if inputs is None:
                raise ValueError(f"{name}(mode='tensor') needs `inputs` (B, 3, H, W).")
            return self.extract_feat(inputs)
        raise ValueError(f"{name} supports mode='loss' and mode='tensor', got {mode!r}; "
                         'evaluate features with mode="tensor" (e.g. a kNN evaluation hook).')

    def loss(self, **batch) -> Dict[str, torch.Tensor]:
        """The weighted loss terms of one iteration (their sum is the official total).

        ``batch`` is the :func:`~dino_mm.datasets.dino_collate` output; see
        :meth:`prepare_inputs`.
        """
        inputs = self.prepare_inputs(**batch)
        targets = self.teacher_output(inputs)
        return self.compute_losses(inputs, targets)

    @abstractmethod
    def compute_losses(self, inputs: Dict[str, Any],
                       targets: Dict[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Student forward and the weighted loss terms for the teacher's ``targets``."""

    def prepare_inputs(self,
                       collated_global_crops: torch.Tensor,
                       collated_masks: torch.Tensor,
                       mask_indices_list: torch.Tensor,
                       masks_weight: torch.Tensor,
                       n_masked_patches: torch.Tensor,
                       collated_local_crops: Optional[torch.Tensor] = None,
                       upperbound: Optional[int] = None,
                       collated_gram_teacher_crops: Optional[torch.Tensor] = None,
                       **unused) -> Dict[str, Any]:
        """Check the collated batch and cast the crops to the parameters' dtype.

        The official collate casts crops to fp16 for its FSDP mixed precision; without an
        autocast context a half input would not match fp32 weights. ``upperbound`` (the
        official static buffer size) is accepted and ignored: gathering exactly the masked
        tokens gives the same numbers without padding.

        Args:
            collated_global_crops (torch.Tensor): (n_g*B, 3, H, W), crop-major.
            collated_masks (torch.Tensor): (n_g*B, P) iBOT masks.
            mask_indices_list (torch.Tensor): (M,) flat indices of the masked tokens.
            masks_weight (torch.Tensor): (M,) weight of each masked token.
            n_masked_patches (torch.Tensor): (1,) M, for the Sinkhorn-Knopp of iBOT.
            collated_local_crops (torch.Tensor, optional): (n_l*B, 3, h, w).
            collated_gram_teacher_crops (torch.Tensor, optional): (n_g*B, 3, H', W') crops
                for a Gram teacher.

        Returns:
            dict: ``global_crops``, ``local_crops`` (None without local crops), ``masks``
            (bool), ``mask_indices_list`` (long), ``masks_weight``, ``n_masked_patches``,
            ``gram_crops`` (or None), ``batch_size``, ``n_local`` (local crops per image).
        """
        name = type(self).__name__
        n_g = self.n_global_crops
        dtype = self._param_dtype()
        global_crops = collated_global_crops.to(dtype)
        if global_crops.shape[0] % n_g:
            raise ValueError(f'{name}: collated_global_crops must hold {n_g} crops per image '
                             f'(crop-major), got {global_crops.shape[0]} images.')
        batch_size = global_crops.shape[0] // n_g
        local_crops = None
        if collated_local_crops is not None and collated_local_crops.numel() > 0:
            if collated_local_crops.shape[0] % batch_size:
                raise ValueError(f'{name}: collated_local_crops has '
                                 f'{collated_local_crops.shape[0]} images, not a multiple of '
                                 f'the batch size {batch_size}.')
            local_crops = collated_local_crops.to(dtype)
        masks = collated_masks.bool()
        if masks.shape[0] != global_crops.shape[0]:
            raise ValueError(f'{name}: collated_masks has {masks.shape[0]} rows, expected one '
                             f'per global crop ({global_crops.shape[0]}).')
        gram_crops = (None if collated_gram_teacher_crops is None else
                      collated_gram_teacher_crops.to(dtype))
        return dict(global_crops=global_crops, local_crops=local_crops, masks=masks,
                    mask_indices_list=mask_indices_list.long(), masks_weight=masks_weight,
                    n_masked_patches=n_masked_patches, gram_crops=gram_crops,
                    batch_size=batch_size,
                    n_local=0 if local_crops is None else local_crops.shape[0] // batch_size)

    @torch.no_grad()
    def teacher_output(self, inputs: Dict[str, Any]) -> Dict[str, Optional[torch.Tensor]]:
        """The teacher on the global crops and its targets, in crop order.

        The class tokens (and, for iBOT, the masked patch tokens) go through the teacher
        heads — one DINO-head call for both when the iBOT head is shared — and become
        softmax-centered or Sinkhorn-Knopp targets at :attr:`teacher_temp`.

        Returns:
            dict: ``dino`` (n_g, B, K) DINO targets (None without DINO loss) and ``ibot``
            (M, K_ibot) iBOT targets (None without iBOT).
        """
        t_cls_head, t_patch_head = self.teacher_head_outputs(inputs)
        return self.targets_from_logits(t_cls_head, t_patch_head, inputs['n_masked_patches'])

    @torch.no_grad()
    def teacher_head_outputs(
            self, inputs: Dict[str, Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Teacher backbone and heads: (n_g*B, K) class-token logits and (M, K_ibot) logits
        of the masked patch tokens (None without iBOT)."""
        teacher = self.teacher
        mask_indices_list = inputs['mask_indices_list']
        crops = inputs.get('teacher_crops')  # a variant may give the teacher other pixels
        crops = (inputs['global_crops'] if crops is None else crops).to(
            next(teacher.parameters()).dtype)
        out = teacher.backbone.forward_features(crops)
        t_cls = out['x_norm_clstoken']
        n_cls = t_cls.shape[0]
        t_patch_head = None
        if self.do_ibot:
            t_patch = out['x_norm_patchtokens'].flatten(0, 1).index_select(0, mask_indices_list)
            if self.ibot_separate_head:
                t_cls_head = teacher.dino_head(t_cls)
                t_patch_head = teacher.ibot_head(t_patch)
            else:
                tokens = teacher.dino_head(torch.cat((t_cls, t_patch)))
                t_cls_head, t_patch_head = tokens[:n_cls], tokens[n_cls:]
        else:
            t_cls_head = teacher.dino_head(t_cls)
        return t_cls_head, t_patch_head

    @torch.no_grad()
    def targets_from_logits(self, t_cls_head: torch.Tensor,
                            t_patch_head: Optional[torch.Tensor],
                            n_masked_patches: torch.Tensor,
                            group: Optional[Any] = None) -> Dict[str, Optional[torch.Tensor]]:
        """Softmax-centered or Sinkhorn-Knopp targets at :attr:`teacher_temp`.

        Args:
            t_cls_head (torch.Tensor): (n_g*B, K) teacher class-token logits, crop-major.
            t_patch_head (torch.Tensor, optional): (M, K_ibot) masked patch-token logits.
            n_masked_patches (torch.Tensor): (1,) M on this rank.
            group (ProcessGroup, optional): The ranks whose samples one Sinkhorn-Knopp
                normalises together (None: all ranks); rank-partitioned multi-distillation
                passes each student's subgroup.
        """
        dino = ibot = None
        temp = self.teacher_temp
        if self.centering == 'centering':
            if self.do_dino:
                dino = self.dino_loss.softmax_center_teacher(t_cls_head, temp)
                self.dino_loss.update_center(t_cls_head)
            if self.do_ibot:
                ibot = self.ibot_patch_loss.softmax_center_teacher(
                    t_patch_head.unsqueeze(0), temp).squeeze(0)
                # An empty batch of masked tokens would turn the center into NaN.
                if t_patch_head.shape[0] > 0:
                    self.ibot_patch_loss.update_center(t_patch_head.unsqueeze(0))
        else:
            if self.do_dino:
                dino = self.dino_loss.sinkhorn_knopp_teacher(t_cls_head, temp, group=group)
            if self.do_ibot:
                ibot = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                    t_patch_head, temp, n_masked_patches_tensor=n_masked_patches, group=group)
        if dino is not None:
            dino = dino.view(self.n_global_crops, -1, dino.shape[-1])
        return dict(dino=dino, ibot=ibot)
