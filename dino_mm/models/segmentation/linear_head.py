"""Linear (BatchNorm + 1x1 conv) decode head of the DINOv2 / DINOv3 segmentation probes.

The official DINOv2 linear and multi-scale ("ms") ADE20K / VOC heads are an mmseg-0.x
``BNHead``: the selected feature maps (optionally with their class tokens broadcast to
the map size) are resized to the first map's size, concatenated, batch-normalised and
classified by a 1x1 convolution. Keeping mmseg's ``conv_seg`` and the official ``bn``
attribute names means the official head checkpoints (``decode_head.bn.*``,
``decode_head.conv_seg.*``) load unchanged. DINOv3 names the same layers
``batchnorm_layer`` / ``conv``; ``tools/convert/convert_seg_head.py`` renames them.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from torch import Tensor

from dino_mm.registry import MODELS
from dino_mm.utils.scope import builds_in_scope

FeatureInput = Union[Tensor, Sequence[Tensor]]


@MODELS.register_module()
@builds_in_scope('mmseg')
class DinoLinearHead(BaseDecodeHead):
    """BatchNorm + 1x1 conv head on frozen DINO features (official ``BNHead``).

    Args:
        in_channels (int | Sequence[int]): Channels of each selected input. With class
            tokens (backbone ``out_type='cls_featmap'``) every (map, cls) pair counts as
            two inputs, e.g. ``[D, D]`` for one layer with its class token.
        channels (int): Must equal the total input channels (the head has no
            projection before the classifier).
        resize_factors (Sequence[float], optional): Per-input rescaling applied before
            the common resize (official option; bilinear when upsampling, area when
            downsampling). Defaults to None.
        norm_cfg (dict, optional): Norm layer config. The official heads use SyncBN,
            which behaves as BatchNorm outside distributed training. ``None`` removes
            the norm. Defaults to ``dict(type='SyncBN', requires_grad=True)``.
        **kwargs: Remaining :class:`mmseg.models.decode_heads.BaseDecodeHead`
            arguments (``num_classes``, ``in_index``, ``input_transform``,
            ``dropout_ratio``, ``loss_decode``, ``align_corners``, ...).
    """

    def __init__(self,
                 in_channels: Union[int, Sequence[int]],
                 channels: int,
                 resize_factors: Optional[Sequence[float]] = None,
                 norm_cfg: Optional[dict] = dict(type='SyncBN', requires_grad=True),
                 **kwargs) -> None:
        super().__init__(in_channels, channels, norm_cfg=norm_cfg, **kwargs)
        if self.in_channels != self.channels:
            raise ValueError(
                f'DinoLinearHead has no projection: channels ({self.channels}) must '
                f'equal the total input channels ({self.in_channels}); set '
                f'channels={self.in_channels} in the decode_head config.')
        self.resize_factors = list(resize_factors) if resize_factors else None
        if norm_cfg is None:
            self.bn = nn.Identity()
        else:
            self.bn = build_norm_layer(norm_cfg, self.in_channels)[1]

    @staticmethod
    def _flatten_inputs(inputs: Sequence[FeatureInput]) -> List[Tensor]:
        """Flatten (map, cls) pairs and turn (B, C) class tokens into (B, C, 1, 1)."""
        flat: List[Tensor] = []
        for item in inputs:
            if isinstance(item, (list, tuple)):
                flat.extend(item)
            else:
                flat.append(item)
        return [x[:, :, None, None] if x.dim() == 2 else x for x in flat]

    def _transform_inputs(self, inputs: Sequence[FeatureInput]) -> Tensor:
        inputs = self._flatten_inputs(inputs)
        if self.input_transform != 'resize_concat':
            return super()._transform_inputs(inputs)
        try:
            selected = [inputs[i] for i in self.in_index]
        except IndexError:
            raise IndexError(
                f'decode_head.in_index={list(self.in_index)} selects inputs that the '
                f'backbone does not return (it returned {len(inputs)} tensors, class '
                'tokens counted separately); check backbone.out_indices / out_type.'
            ) from None
        if self.resize_factors is not None:
            if len(self.resize_factors) != len(selected):
                raise ValueError(
                    f'resize_factors has {len(self.resize_factors)} entries but '
                    f'{len(selected)} inputs are selected by in_index.')
            selected = [
                resize(x, scale_factor=f, mode='bilinear' if f >= 1 else 'area')
                for x, f in zip(selected, self.resize_factors)
            ]
        # A 1x1 class token resized bilinearly to the map size is a broadcast copy,
        # which is how the official head concatenates class tokens.
        size = selected[0].shape[2:]
        selected = [
            resize(x, size=size, mode='bilinear', align_corners=self.align_corners)
            for x in selected
        ]
        return torch.cat(selected, dim=1)

    def forward(self, inputs: Sequence[FeatureInput]) -> Tensor:
        """Return per-pixel class logits at the feature resolution."""
        feats = self.bn(self._transform_inputs(inputs))
        return self.cls_seg(feats)


# The official DINOv2 segmentation configs name the head ``BNHead``; the alias lets
# them be ported by changing only the scope prefix.
MODELS.register_module(name='BNHead', module=DinoLinearHead)
