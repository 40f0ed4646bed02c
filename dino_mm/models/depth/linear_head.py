"""The official linear depth head of DINOv2 (``*_ld`` hub models, "linear" and "linear4").

Each selected backbone layer gives a patch map and (optionally) its class token; the
class token is broadcast over the map and concatenated to it, the maps are upsampled
(bilinear, ``upsample`` times the first map's size) and concatenated, and a 1x1 conv
``conv_depth`` classifies every pixel into depth bins whose expectation is the depth.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch import Tensor

from dino_mm.registry import MODELS
from .decode_head import DepthBaseDecodeHead


@MODELS.register_module()
class LinearDepthHead(DepthBaseDecodeHead):
    """Linear classification-regression depth head (official DINOv2 ``BNHead`` for depth).

    The official hub head has its BatchNorm commented out, so ``norm_cfg=None`` (the
    default) reproduces it exactly: upsample + concat -> 1x1 conv -> bins. DINOv3's linear
    depth protocol uses a BatchNorm on the concatenated features and no class token; pass
    ``norm_cfg=dict(type='SyncBN')`` and a backbone with ``out_type='featmap'`` for it.

    Args:
        in_channels (Sequence[int]): Channels of each selected input after class-token
            concatenation (2*D per layer with class tokens, D without).
        channels (int, optional): Channels of the concatenated feature; defaults to
            ``sum(in_channels)``.
        in_index (Sequence[int]): Which backbone outputs to use. Defaults to (0, 1, 2, 3).
        upsample (int): Upsampling factor of the first map's size before concatenation.
            Defaults to 4 (official).
        norm_cfg (dict, optional): Norm before ``conv_depth`` (key ``bn``). Defaults to None.
        dropout_ratio (float): Dropout2d before ``conv_depth``. Defaults to 0.
        classify (bool): Bins (official) or direct regression. Defaults to True.
        hub_bins_quirk (bool): Place the bins between 0.001 and 80 whatever ``min_depth`` /
            ``max_depth`` say, as the official hub ``*_ld`` constructors do (they ignore
            ``depth_range``). Defaults to False.
        **kwargs: :class:`DepthBaseDecodeHead` arguments (min_depth, max_depth, n_bins,
            bins_strategy, norm_strategy, align_corners, loss_decode, init_cfg).
    """

    HUB_MIN_DEPTH = 1e-3
    HUB_MAX_DEPTH = 80.0

    def __init__(self,
                 in_channels: Sequence[int],
                 channels: Optional[int] = None,
                 in_index: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 upsample: int = 4,
                 norm_cfg: Optional[dict] = None,
                 dropout_ratio: float = 0.0,
                 classify: bool = True,
                 hub_bins_quirk: bool = False,
                 **kwargs) -> None:
        if isinstance(in_index, int):
            in_index = [in_index]
        if isinstance(in_channels, int):
            in_channels = [in_channels] * len(in_index)
        if len(in_channels) != len(in_index):
            raise ValueError(f'LinearDepthHead: in_channels {list(in_channels)} and in_index '
                             f'{list(in_index)} must have the same length.')
        if channels is None:
            channels = int(sum(in_channels))
        if channels != sum(in_channels):
            raise ValueError(f'LinearDepthHead: channels ({channels}) must equal '
                             f'sum(in_channels) = {sum(in_channels)} (features are concatenated).')
        if hub_bins_quirk:
            kwargs['min_depth'] = self.HUB_MIN_DEPTH
            kwargs['max_depth'] = self.HUB_MAX_DEPTH
        super().__init__(in_channels=list(in_channels), channels=channels,
                         in_index=list(in_index), input_transform='resize_concat',
                         classify=classify, **kwargs)
        self.upsample = upsample
        self.hub_bins_quirk = hub_bins_quirk
        if norm_cfg is not None:
            self.bn = build_norm_layer(norm_cfg, channels)[1]
        else:
            self.bn = None
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_depth = nn.Conv2d(channels, self.n_bins if classify else 1, kernel_size=1)

    @staticmethod
    def _with_cls_token(x) -> Tensor:
        """(map, cls) -> map concatenated with the broadcast class token; map -> map."""
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError('LinearDepthHead expects each backbone output to be a map or a '
                                 f'(map, cls_token) pair, got a sequence of length {len(x)}.')
            feat, cls_token = x
            if feat.dim() == 2:
                feat = feat[:, :, None, None]
            cls_map = cls_token[:, :, None, None].expand_as(feat)
            return torch.cat([feat, cls_map], dim=1)
        return x[:, :, None, None] if x.dim() == 2 else x

    def _forward_feature(self, inputs: Sequence) -> Tensor:
        maps = [self._with_cls_token(x) for x in self._select_inputs(inputs)]
        for m, c in zip(maps, self.in_channels):
            if m.shape[1] != c:
                raise ValueError(f'LinearDepthHead: an input has {m.shape[1]} channels, '
                                 f'expected {c} (in_channels={self.in_channels}); with class '
                                 'tokens each layer gives 2*embed_dim channels.')
        size = [s * self.upsample for s in maps[0].shape[2:]]
        maps = [F.interpolate(m, size=size, mode='bilinear', align_corners=self.align_corners)
                for m in maps]
        feat = torch.cat(maps, dim=1)
        if self.bn is not None:
            feat = self.bn(feat)
        if self.dropout is not None:
            feat = self.dropout(feat)
        return feat

    def forward(self, inputs: Sequence) -> Tensor:
        """Args:
            inputs (Sequence): Backbone outputs, each an NCHW map or a (map, cls) pair.

        Returns:
            Tensor: (B, 1, upsample*h, upsample*w) depth.
        """
        return self.depth_pred(self._forward_feature(inputs))
