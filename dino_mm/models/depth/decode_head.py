"""Base class of the depth decode heads: input selection, depth regression or
classification-regression over bins, losses, official head files.

mmseg 1.x has no depth head base class (its ``BaseDecodeHead`` always builds a
``conv_seg`` classifier and segmentation losses), so this one is written here. It keeps the
attribute names the official DINOv2 depth heads use (``conv_depth``, ``min_depth``,
``max_depth``, ``n_bins``) so official head checkpoints load without renaming.

The CHMv2 canopy-height head of DINOv3 (``dinov3_vitl16_chmv2``) places its bins and
normalises its logits in its own way (``chmv2_mixlog``): :func:`chmv2_mixlog_bins` and
:func:`chmv2_mixlog_depth` follow ``create_chmv2_mixlog_bins`` and
``create_outputs_with_chmv2_mixlog_norm`` of the official ``dinov3/eval/depth/utils.py``.
"""
import os
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from dino_mm.registry import MODELS

BINS_STRATEGIES = ('UD', 'SID', 'chmv2_mixlog')
NORM_STRATEGIES = ('linear', 'softmax', 'sigmoid', 'chmv2_mixlog')

# The CHMv2 head predicts heights divided by this factor: its bins end at max_depth / 8 and
# the weighted bin sum is multiplied back (official create_chmv2_mixlog_bins / _norm).
CHMV2_DEPTH_SCALE = 8.0


def chmv2_mixlog_bins(min_depth: float, max_depth: float, n_bins: int,
                      device: Optional[torch.device] = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Bin centres of the CHMv2 head: a blend of linear and log spacing.

    Both spacings run from ``min_depth`` to ``max_depth / 8``; bin ``k`` takes the weight
    ``t_k`` (linspace 1 -> 0) of the log spacing and ``1 - t_k`` of the linear one, so the
    first bins are log-spaced (fine steps for low vegetation) and the last ones linear.

    Args:
        min_depth (float): First bin.
        max_depth (float): Largest predicted height; the bins end at ``max_depth / 8``.
        n_bins (int): Number of bins.
        device (torch.device, optional): Device of the result.
        dtype (torch.dtype): Dtype of the result. Defaults to float32.

    Returns:
        Tensor: (n_bins,) bin centres.
    """
    top = max_depth / CHMV2_DEPTH_SCALE
    # The logs are taken of float32 scalars as in the official code, so the bins are the
    # official ones to the last bit in float32.
    log_lo = torch.log(torch.tensor(min_depth, dtype=torch.float32))
    log_hi = torch.log(torch.tensor(top, dtype=torch.float32))
    linear = torch.linspace(min_depth, top, n_bins, device=device)
    log = torch.exp(torch.linspace(log_lo, log_hi, n_bins, device=device))
    t = torch.linspace(1.0, 0.0, n_bins, device=device)
    return (t * log + (1.0 - t) * linear).to(dtype)


def chmv2_mixlog_depth(logits: Tensor, bins: Tensor, max_shift: float = 1e-4,
                       eps_shift: float = 1e-8, eps: float = 1e-12) -> Tensor:
    """Height (B, 1, H, W) from CHMv2 bin logits (B, n_bins, H, W): ``chmv2_mixlog`` norm.

    ReLU'd logits, shifted to be strictly positive (by at most ``max_shift``, plus
    ``eps_shift``), are normalised to sum to 1 over the bins (a linear, not exponential,
    normalisation) and weight the bin centres; the sum is multiplied by 8 to undo the
    ``max_depth / 8`` of :func:`chmv2_mixlog_bins`.

    Args:
        logits (Tensor): Raw head output.
        bins (Tensor): (n_bins,) centres from :func:`chmv2_mixlog_bins`.
        max_shift (float): Largest positive shift. Defaults to 1e-4 (official).
        eps_shift (float): Added to the shift so no weight is 0. Defaults to 1e-8.
        eps (float): Floor of the denominator, the bins and the output. Defaults to 1e-12.
    """
    y = F.relu(logits)
    # After the ReLU the minimum is >= 0, so the clamped shift is eps_shift in practice;
    # the official formula is kept as it is.
    shift = (-y.amin(dim=1, keepdim=True)).clamp_min(0.0).clamp_max(max_shift) + eps_shift
    y = y + shift
    denom = y.sum(dim=1, keepdim=True)
    denom = torch.nan_to_num(denom, nan=1.0, posinf=1.0, neginf=1.0).clamp_min(eps)
    weights = y / denom
    centres = bins.view(1, -1, 1, 1).clamp_min(eps)
    depth = (weights * centres).sum(dim=1, keepdim=True).clamp_min(eps)
    return depth * CHMV2_DEPTH_SCALE


def resolve_head_file(checkpoint: Union[str, os.PathLike], what: str = 'depth head') -> str:
    """A head checkpoint named in a config -> an existing path (never downloads).

    A path that exists is used as given; otherwise its file name (e.g. the official
    ``dinov3_vitl16_chmv2_dpt_head-3703d643.pth``, written ``checkpoints/<name>`` in the
    shipped configs) is looked up where the hub finds weights (``$DINO_MM_WEIGHTS``,
    ``~/.cache/dino_mm/weights``, torch.hub's checkpoint folder).

    Raises:
        FileNotFoundError: Naming the file and the folders searched.
    """
    path = osp.expanduser(os.fspath(checkpoint))
    if osp.isfile(path):
        return path
    # Imported here: dino_mm.hub builds on the models.
    from dino_mm.hub.utils import ENV_WEIGHTS_DIR, find_weights, weights_dirs
    found = find_weights(osp.basename(path))
    if found is not None:
        return found
    raise FileNotFoundError(
        f'{what}: head checkpoint {checkpoint!r} does not exist (relative to {os.getcwd()}) '
        f'and {osp.basename(path)!r} is in none of {weights_dirs()}; dino_mm never '
        f'downloads. Put the file in ${ENV_WEIGHTS_DIR} or give its path.')


def head_state_dict_from(obj: Any, source: str = 'the checkpoint') -> Dict[str, Tensor]:
    """The head tensors of a checkpoint object, keys relative to the head.

    Accepts mmengine / dino_mm checkpoints (``{'state_dict': {'decode_head.*': ...}}``, the
    layout of the official DINOv2 depth heads; other keys such as ``backbone.*`` are
    dropped) and the bare state dicts of the official DINOv3 depth heads (CHMv2, 7B
    SYNTHMIX), which the official hub loads into ``depther.decoder`` as they are.
    """
    sd = obj.get('state_dict', obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping):
        raise TypeError(f'{source}: expected a depth head state dict, got {type(sd).__name__}.')
    if any(k.startswith('decode_head.') for k in sd):
        return {k[len('decode_head.'):]: v for k, v in sd.items() if k.startswith('decode_head.')}
    return {k: v for k, v in sd.items() if isinstance(v, Tensor)}


def load_depth_head(head: nn.Module, path_or_state_dict: Union[str, os.PathLike, Mapping],
                    source: Optional[str] = None) -> None:
    """Load a depth head checkpoint into ``head`` strictly (see :func:`head_state_dict_from`).

    Raises:
        RuntimeError: Missing, unexpected or mis-shaped keys, listed with the file name.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        from dino_mm.models.converters import read_checkpoint  # the safe checkpoint reader
        source = os.fspath(path_or_state_dict)
        obj = read_checkpoint(source)[0]
    else:
        obj, source = path_or_state_dict, source or 'the given state dict'
    sd = head_state_dict_from(obj, source)
    target = head.state_dict()
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    bad = sorted(k for k in set(sd) & set(target) if sd[k].shape != target[k].shape)
    if missing or unexpected or bad:
        raise RuntimeError(
            f'Depth head checkpoint {source} does not match the model: missing {missing[:10]}, '
            f'unexpected {unexpected[:10]}, mis-shaped '
            f'{[(k, tuple(sd[k].shape), tuple(target[k].shape)) for k in bad[:10]]}.')
    head.load_state_dict(sd, strict=True)


class DepthBaseDecodeHead(BaseModule):
    """Common parts of the depth heads.

    Args:
        in_channels (int | Sequence[int]): Channels of the selected inputs.
        channels (int): Channels of the feature the depth layer ``conv_depth`` reads.
        in_index (int | Sequence[int]): Which backbone outputs to use. Defaults to -1.
        input_transform (str, optional): None (one input), 'resize_concat' or
            'multiple_select'. Defaults to None.
        align_corners (bool): ``align_corners`` of the bilinear resizes. Defaults to False.
        min_depth (float): Smallest predicted depth (bin start). Defaults to 1e-3.
        max_depth (float): Largest predicted depth (bin end). Defaults to 10.0.
        classify (bool): Classification-regression over ``n_bins`` depth bins instead of
            direct regression. Defaults to False.
        n_bins (int): Number of depth bins. Defaults to 256.
        bins_strategy (str): 'UD' (bins linear between min and max depth), 'SID'
            (``torch.logspace(min_depth, max_depth)``, as in the official code, i.e. the
            limits are exponents) or 'chmv2_mixlog' (:func:`chmv2_mixlog_bins`, the
            DINOv3 CHMv2 head). Defaults to 'UD'.
        norm_strategy (str): How bin logits become probabilities: 'linear'
            ((ReLU(logits) + 0.1) normalised, official default), 'softmax', 'sigmoid' or
            'chmv2_mixlog' (:func:`chmv2_mixlog_depth`, which includes the x8 output
            scale of the CHMv2 head). Defaults to 'linear'.
        scale_up (bool): For regression: ``sigmoid(x) * max_depth`` instead of
            ``ReLU(x) + min_depth``. Defaults to False.
        loss_decode (dict | list[dict]): Loss configs (e.g. ``dino_mm.SigLoss``).
            Defaults to a SigLoss of weight 1.
        init_cfg (dict | list[dict], optional): Initialisation config. ``dict(type=
            'Pretrained', checkpoint=FILE)`` loads a head file strictly in
            :meth:`init_weights` (see there). Defaults to None.
    """

    def __init__(self,
                 in_channels: Union[int, Sequence[int]],
                 channels: int,
                 in_index: Union[int, Sequence[int]] = -1,
                 input_transform: Optional[str] = None,
                 align_corners: bool = False,
                 min_depth: float = 1e-3,
                 max_depth: float = 10.0,
                 classify: bool = False,
                 n_bins: int = 256,
                 bins_strategy: str = 'UD',
                 norm_strategy: str = 'linear',
                 scale_up: bool = False,
                 loss_decode: Union[dict, List[dict]] = dict(type='dino_mm.SigLoss',
                                                             valid_mask=True,
                                                             loss_weight=1.0),
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg)
        if input_transform not in (None, 'resize_concat', 'multiple_select'):
            raise ValueError(f"input_transform must be None, 'resize_concat' or "
                             f"'multiple_select', got {input_transform!r}.")
        if bins_strategy not in BINS_STRATEGIES:
            raise ValueError(f'bins_strategy must be one of {BINS_STRATEGIES}, '
                             f'got {bins_strategy!r}.')
        if norm_strategy not in NORM_STRATEGIES:
            raise ValueError(f'norm_strategy must be one of {NORM_STRATEGIES}, '
                             f'got {norm_strategy!r}.')
        if not 0 <= min_depth < max_depth:
            raise ValueError(f'Need 0 <= min_depth < max_depth, got min_depth={min_depth}, '
                             f'max_depth={max_depth}.')
        if input_transform is None and not isinstance(in_index, int):
            raise ValueError('With input_transform=None, in_index must be an int, '
                             f'got {in_index!r}.')
        self.in_channels = in_channels
        self.channels = channels
        self.in_index = in_index
        self.input_transform = input_transform
        self.align_corners = align_corners
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.classify = classify
        self.n_bins = n_bins
        self.bins_strategy = bins_strategy
        self.norm_strategy = norm_strategy
        self.scale_up = scale_up
        # mmseg's EncoderDecoder reads these two attributes of its decode head.
        self.out_channels = 1
        self.num_classes = 1

        if isinstance(loss_decode, dict):
            loss_decode = [loss_decode]
        self.loss_decode = nn.ModuleList([MODELS.build(cfg) for cfg in (loss_decode or [])])

    def init_weights(self) -> None:
        """``init_cfg=dict(type='Pretrained', checkpoint=FILE)``: load a head file strictly.

        The file is found as :func:`resolve_head_file` says (an official file name is
        looked up in the weights folders) and loaded with :func:`load_depth_head`, so a
        config that names the official head never runs with a random or half-loaded one
        (mmengine's own ``Pretrained`` init loads non-strictly and only from the path).
        Any other ``init_cfg`` is mmengine's.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise KeyError("init_cfg of type 'Pretrained' needs a 'checkpoint' path.")
            what = f'{type(self).__name__} init_cfg'
            load_depth_head(self, resolve_head_file(cfg['checkpoint'], what))
            self._is_init = True
            return
        super().init_weights()

    # ----------------------------------------------------------------- inputs
    def _select_inputs(self, inputs: Sequence) -> list:
        if self.input_transform is None:
            return [inputs[self.in_index]]
        return [inputs[i] for i in self.in_index]

    # ------------------------------------------------------------------ depth
    def depth_bins(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``n_bins`` bin centres (official placement)."""
        if self.bins_strategy == 'UD':
            return torch.linspace(self.min_depth, self.max_depth, self.n_bins,
                                  device=device, dtype=dtype)
        if self.bins_strategy == 'chmv2_mixlog':
            return chmv2_mixlog_bins(self.min_depth, self.max_depth, self.n_bins, device, dtype)
        return torch.logspace(self.min_depth, self.max_depth, self.n_bins,
                              device=device, dtype=dtype)

    def depth_pred(self, feat: Tensor) -> Tensor:
        """Turn the feature read by ``conv_depth`` into a (B, 1, H, W) depth map."""
        logit = self.conv_depth(feat)
        if not self.classify:
            if self.scale_up:
                return torch.sigmoid(logit) * self.max_depth
            return F.relu(logit) + self.min_depth
        if self.norm_strategy == 'chmv2_mixlog':
            return chmv2_mixlog_depth(logit, self.depth_bins(feat.device, logit.dtype))
        if self.norm_strategy == 'linear':
            # Official (AdaBins-style) normalisation: shift ReLU'd logits by 0.1 so every bin
            # keeps some mass, then divide by the sum.
            prob = F.relu(logit) + 0.1
            prob = prob / prob.sum(dim=1, keepdim=True)
        elif self.norm_strategy == 'softmax':
            prob = torch.softmax(logit, dim=1)
        else:
            prob = torch.sigmoid(logit)
            prob = prob / prob.sum(dim=1, keepdim=True)
        bins = self.depth_bins(feat.device, prob.dtype)
        return torch.einsum('bkhw,k->bhw', prob, bins).unsqueeze(1)

    def forward(self, inputs: Sequence) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------- train/test
    def loss_by_feat(self, depth_pred: Tensor, gt_depth: Tensor) -> Dict[str, Tensor]:
        """Losses of a predicted (B, 1, h, w) map against the (B, 1, H, W) ground truth."""
        depth_pred = F.interpolate(depth_pred, size=gt_depth.shape[-2:], mode='bilinear',
                                   align_corners=self.align_corners)
        losses = {}
        for loss in self.loss_decode:
            name = loss.loss_name
            value = loss(depth_pred, gt_depth)
            losses[name] = losses[name] + value if name in losses else value
        return losses

    def loss(self, inputs: Sequence, batch_data_samples: list,
             train_cfg: Optional[dict] = None) -> Dict[str, Tensor]:
        """Forward and compute the losses (mmseg decode-head interface).

        Args:
            inputs (Sequence): Backbone outputs.
            batch_data_samples (list[SegDataSample]): Samples holding ``gt_depth_map``.
            train_cfg (dict, optional): Unused; kept for the mmseg interface.
        """
        if not self.loss_decode:
            raise RuntimeError(f'{type(self).__name__} was built with loss_decode=[] '
                               '(inference only); give it a loss to train.')
        gt = []
        for i, sample in enumerate(batch_data_samples):
            if 'gt_depth_map' not in sample:
                raise KeyError(f'Data sample {i} ({sample.metainfo.get("img_path")}) has no '
                               'gt_depth_map; add dino_mm.LoadDepthAnnotation and '
                               'mmseg.PackSegInputs to the training pipeline.')
            gt.append(sample.gt_depth_map.data)
        gt_depth = torch.stack(gt).to(torch.float32)
        return self.loss_by_feat(self.forward(inputs), gt_depth)

    def predict(self, inputs: Sequence, batch_img_metas: List[dict],
                test_cfg: Optional[dict] = None) -> Tensor:
        """Depth resized to the network input size (mmseg decode-head interface)."""
        depth = self.forward(inputs)
        size = batch_img_metas[0]['img_shape'][:2]
        return F.interpolate(depth, size=size, mode='bilinear', align_corners=self.align_corners)
