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
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from dino_mm.registry import MODELS
from ..losses import DINOLoss, iBOTPatchLoss, KoLeoLoss
from .base import FrozenModuleDict, SSLMetaArch


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



@MODELS.register_module()
class DINOv2(SSLMetaArch):
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
        super().__init__(centering=centering, teacher_temp=teacher_temp, clip_grad=clip_grad,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if dino_loss_weight <= 0 and ibot_loss_weight <= 0:
            raise ValueError('DINOv2: at least one of dino_loss_weight / ibot_loss_weight must '
                             'be positive.')
        self.dino_loss_weight = dino_loss_weight
        self.koleo_loss_weight = koleo_loss_weight
        self.ibot_loss_weight = ibot_loss_weight
        self.do_dino = dino_loss_weight > 0
        self.do_koleo = self.do_dino and koleo_loss_weight > 0
        self.do_ibot = ibot_loss_weight > 0
        self.ibot_separate_head = ibot_head is not None

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
        # The EMA copy of the student: `teacher` here, `student_ema` in distillation.
        setattr(self, self.ema_name, FrozenModuleDict(teacher))
        self._copy_student_to_ema()

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

    # ------------------------------------------------------------------ EMA
    def _copy_student_to_ema(self) -> None:
        ema = getattr(self, self.ema_name)
        for key in self.student:
            ema[key].load_state_dict(self.student[key].state_dict(), strict=True)

    def init_weights(self) -> None:
        """Initialise the student (and heads) and make its EMA an exact copy again."""
        super().init_weights()
        self._copy_student_to_ema()

    # ------------------------------------------------------------------ forward
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

    def compute_losses(self, inputs: Dict[str, Any],
                       targets: Dict[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Official DINOv2 loss terms (see the class docstring)."""
        n_g = self.n_global_crops
        n_l = inputs['n_local']
        masks = inputs['masks']
        n_masked = inputs['mask_indices_list'].shape[0]
        # Official normalisers; max(., 1) keeps the global term finite without local crops.
        n_terms = max(n_l * n_g, 1) + (n_g - 1) * n_g
        loss_scale = 2  # the two global crops are processed together
        # The official DINOv2 compares student crop A with teacher crop B: swap the teacher
        # crops (docs/reference.md §6.2).
        teacher_dino = None if targets['dino'] is None else targets['dino'].flip(0)

        student = self.student_forward(inputs['global_crops'], inputs['local_crops'], masks,
                                       inputs['mask_indices_list'])
        s_global_cls = student['global_tokens']['x_norm_clstoken']
        s_local_head, s_global_head = student['local_head'], student['global_head']

        losses: Dict[str, torch.Tensor] = {}
        if self.do_dino:
            if n_l > 0:
                dino_local = self.dino_loss(s_local_head.chunk(n_l), teacher_dino) / n_terms
                losses['dino_local_crops_loss'] = self.dino_loss_weight * dino_local
            # The teacher crops are swapped, so crop A is matched to crop B only.
            dino_global = self.dino_loss([s_global_head], [teacher_dino.flatten(0, 1)])
            losses['dino_global_crops_loss'] = (self.dino_loss_weight * dino_global *
                                                loss_scale / n_terms)
            if self.do_koleo:
                # Per crop: never push apart the two views of the same image.
                koleo = sum(self.koleo_loss(cls) for cls in s_global_cls.chunk(n_g))
                losses['koleo_loss'] = self.koleo_loss_weight * koleo
        if self.do_ibot:
            ibot = self.ibot_patch_loss.forward_masked(
                student['patch_head'], targets['ibot'], student_masks_flat=masks,
                n_masked_patches=n_masked, masks_weight=inputs['masks_weight'])
            losses['ibot_loss'] = self.ibot_loss_weight * ibot * loss_scale / n_g
        return losses
