"""Base class of the depth decode heads: input selection, depth regression or
classification-regression over bins, losses.

mmseg 1.x has no depth head base class (its ``BaseDecodeHead`` always builds a
``conv_seg`` classifier and segmentation losses), so this one is written here. It keeps the
attribute names the official DINOv2 depth heads use (``conv_depth``, ``min_depth``,
``max_depth``, ``n_bins``) so official head checkpoints load without renaming.
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from dino_mm.registry import MODELS

BINS_STRATEGIES = ('UD', 'SID')
NORM_STRATEGIES = ('linear', 'softmax', 'sigmoid')


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
        bins_strategy (str): 'UD' (bins linear between min and max depth) or 'SID'
            (``torch.logspace(min_depth, max_depth)``, as in the official code, i.e. the
            limits are exponents). Defaults to 'UD'.
        norm_strategy (str): How bin logits become probabilities: 'linear'
            ((ReLU(logits) + 0.1) normalised, official default), 'softmax' or 'sigmoid'.
            Defaults to 'linear'.
        scale_up (bool): For regression: ``sigmoid(x) * max_depth`` instead of
            ``ReLU(x) + min_depth``. Defaults to False.
        loss_decode (dict | list[dict]): Loss configs (e.g. ``dino_mm.SigLoss``).
            Defaults to a SigLoss of weight 1.
        init_cfg (dict | list[dict], optional): Initialisation config. Defaults to None.
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
        return torch.logspace(self.min_depth, self.max_depth, self.n_bins,
                              device=device, dtype=dtype)

    def depth_pred(self, feat: Tensor) -> Tensor:
        """Turn the feature read by ``conv_depth`` into a (B, 1, H, W) depth map."""
        logit = self.conv_depth(feat)
        if not self.classify:
            if self.scale_up:
                return torch.sigmoid(logit) * self.max_depth
            return F.relu(logit) + self.min_depth
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
