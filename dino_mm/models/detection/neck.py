"""Multi-scale feature maps for DETR-style detectors from a plain (single-stride) ViT.

mmdet 3.3 ships no simple feature pyramid for plain backbones (ViTDet lives in its
``projects/`` folder, not in the wheel), so it is written here: the ViTDet recipe of
deconvolutions / identity / max-pooling from one stride-``p`` map, each level followed by
a 1x1 and a 3x3 convolution with LayerNorm. Hierarchical backbones (DINOv3 ConvNeXt)
already produce several strides and use mmdet's ``ChannelMapper`` instead.
"""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from dino_mm.registry import MODELS

__all__ = ['ViTSimpleFeaturePyramid', 'LayerNorm2d']


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


def _resample(in_channels: int, scale: float) -> Tuple[nn.Module, int]:
    """Layers that resize a map by ``scale`` (a power of two); returns (module, channels)."""
    if scale == 4.0:
        mid = in_channels // 2
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, mid, 2, stride=2), LayerNorm2d(mid), nn.GELU(),
            nn.ConvTranspose2d(mid, in_channels // 4, 2, stride=2)), in_channels // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2), in_channels // 2
    if scale == 1.0:
        return nn.Identity(), in_channels
    if scale == 0.5:
        return nn.MaxPool2d(2, 2), in_channels
    if scale == 0.25:
        return nn.Sequential(nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2)), in_channels
    raise ValueError(f'ViTSimpleFeaturePyramid: scale factors must be in '
                     f'(4, 2, 1, 0.5, 0.25), got {scale}.')


@MODELS.register_module()
class ViTSimpleFeaturePyramid(BaseModule):
    """Simple feature pyramid (ViTDet) turning a plain ViT into multi-scale maps.

    Args:
        in_channels (int): Channels of the backbone maps (ViT embed dim).
        out_channels (int): Channels of every output level. Defaults to 256.
        scale_factors (Sequence[float]): Resize factor of each level relative to the
            backbone stride (patch size). Defaults to (2.0, 1.0, 0.5, 0.25): strides
            p/2, p, 2p, 4p, i.e. 8/16/32/64 for patch 16.
        in_index (int | Sequence[int]): Which backbone output feeds the pyramid. An int
            uses one map for every level (ViTDet); a sequence (one per level) takes a
            different block for each level, as the DINOv3 detector uses 4 layers.
            Defaults to -1.
        norm_eps (float): LayerNorm epsilon. Defaults to 1e-6.
        init_cfg (dict, optional): MMEngine init config.
    """

    def __init__(self, in_channels: int, out_channels: int = 256,
                 scale_factors: Sequence[float] = (2.0, 1.0, 0.5, 0.25),
                 in_index: Union[int, Sequence[int]] = -1, norm_eps: float = 1e-6,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_index, int) and len(in_index) != len(scale_factors):
            raise ValueError(f'ViTSimpleFeaturePyramid: in_index {list(in_index)} must '
                             f'have one entry per scale factor {list(scale_factors)}.')
        self.scale_factors = tuple(float(s) for s in scale_factors)
        self.in_index = in_index
        self.resamplers = nn.ModuleList()
        self.projections = nn.ModuleList()
        for scale in self.scale_factors:
            resample, ch = _resample(in_channels, scale)
            self.resamplers.append(resample)
            self.projections.append(nn.Sequential(
                nn.Conv2d(ch, out_channels, 1, bias=False),
                LayerNorm2d(out_channels, eps=norm_eps),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels, eps=norm_eps)))

    def _select(self, inputs: Sequence, level: int) -> torch.Tensor:
        idx = self.in_index if isinstance(self.in_index, int) else self.in_index[level]
        x = inputs[idx]
        if isinstance(x, (tuple, list)):  # (map, cls) pairs from out_type='cls_featmap'
            x = x[0]
        if x.dim() != 4:
            raise ValueError(f'ViTSimpleFeaturePyramid expects NCHW backbone maps, got '
                             f'shape {tuple(x.shape)}; set out_type="featmap" on the '
                             f'backbone.')
        return x

    def forward(self, inputs: Union[Sequence[torch.Tensor], torch.Tensor]
                ) -> Tuple[torch.Tensor, ...]:
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs, )
        outs: List[torch.Tensor] = []
        for level, (resample, proj) in enumerate(zip(self.resamplers, self.projections)):
            outs.append(proj(resample(self._select(inputs, level))))
        return tuple(outs)
