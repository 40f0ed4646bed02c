"""DPT depth head (Ranftl et al. 2021) as used by the official DINOv2 ``*_dd`` models, the
DINOv3 7B depther and the DINOv3 CHMv2 canopy-height model (``dinov3_vitl16_chmv2``).

The reassemble and fusion blocks are mmseg's (``mmseg.models.decode_heads.dpt_head``): same
structure and parameter names as the official head, so ``decode_head.reassemble_blocks.*``,
``decode_head.convs.*``, ``decode_head.fusion_blocks.*``, ``decode_head.project.*`` and
``decode_head.conv_depth.head.*`` line up with official checkpoints. mmseg's ``DPTHead`` itself
is a segmentation head (``conv_seg`` classifier, seg losses), so the depth head is assembled here.
"""
from typing import List, Optional, Sequence

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.dpt_head import FeatureFusionBlock, ReassembleBlocks
from torch import Tensor

from dino_mm.registry import MODELS
from .decode_head import DepthBaseDecodeHead


class DepthOutputBlock(nn.Module):
    """Final DPT layers: conv (C -> C/2), x2 bilinear upsampling, conv (-> hidden), ReLU,
    1x1 conv to one depth channel (or ``out_channels`` bins). Keys ``head.{0,2,4}.*``.

    Args:
        channels (int): Input channels.
        out_channels (int): 1 for regression, the number of bins for classification.
        n_hidden_channels (int): Width of the hidden conv. Defaults to 32 (official
            ``UpConvHead`` default; the CHMv2 head uses 128).
        align_corners (bool): Of the x2 upsampling. Defaults to True, as the official
            ``HeadDepth`` (DINOv2) and ``UpConvHead`` (DINOv3).
    """

    def __init__(self, channels: int, out_channels: int = 1, n_hidden_channels: int = 32,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode='bilinear', align_corners=align_corners),
            nn.Conv2d(channels // 2, n_hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(n_hidden_channels, out_channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


def _with_conv_bias(unit: nn.Module, act_cfg: dict, norm_cfg: Optional[dict]) -> None:
    """Give the two 3x3 convs of an mmseg ``PreActResidualConvUnit`` a bias.

    mmseg hard-codes ``bias=False``; the official DINOv3 head has ``use_bias`` (True in
    CHMv2). The ConvModules are rebuilt in place, so the keys stay
    ``res_conv_unit*.conv{1,2}.conv.{weight,bias}`` as in the official files.
    """
    for name in ('conv1', 'conv2'):
        old = getattr(unit, name)
        c = old.conv
        setattr(unit, name, ConvModule(c.in_channels, c.out_channels, c.kernel_size,
                                       stride=c.stride, padding=c.padding, dilation=c.dilation,
                                       norm_cfg=norm_cfg, act_cfg=act_cfg, bias=True,
                                       order=('act', 'conv', 'norm')))


@MODELS.register_module()
class DPTDepthHead(DepthBaseDecodeHead):
    """DPT depth head on four ViT layers.

    Official DINOv2 ``_dd`` head: ``embed_dims=D``, ``post_process_channels=[D/8, D/4, D/2, D]``,
    ``channels=256``, ``readout_type='project'`` (needs (map, cls) backbone outputs), no norm,
    regression ``ReLU(x) + min_depth``. The DINOv3 7B depther uses ``readout_type='ignore'``,
    ``channels=512``, ``post_process_channels=[2048]*4``, BatchNorm and 256 bins
    (``classify=True``). The DINOv3 CHMv2 head (official ``_get_chmv2_config``) uses
    ``readout_type='project'``, ``channels=256``, ``post_process_channels=[128, 256, 512,
    1024]``, biased residual convs (``use_bias=True``), no ``project`` conv after the fusion
    (``projection_after_fusion=False``), a 128-wide output block with ``align_corners=True``
    and 256 ``chmv2_mixlog`` bins between 0.001 and 96 m.

    Args:
        embed_dims (int): Backbone embedding dim D. Defaults to 768.
        post_process_channels (Sequence[int]): Channels after reassembling each of the
            four layers. Defaults to (96, 192, 384, 768).
        readout_type (str): Use of the class token: 'ignore', 'add' or 'project'.
            Defaults to 'project'.
        patch_size (int): Backbone patch size (informative). Defaults to 14.
        expand_channels (bool): Double the post-process channels stage by stage
            (official option). Defaults to False.
        in_index (Sequence[int]): Backbone outputs used. Defaults to (0, 1, 2, 3).
        channels (int): Fusion channels. Defaults to 256.
        act_cfg (dict): Activation of the residual units. Defaults to ReLU.
        norm_cfg (dict, optional): Norm of the residual units and of ``project``.
            Defaults to None (official DINOv2).
        use_bias (bool): Biases in the 3x3 convs of the residual units (official DINOv3
            ``use_bias``). Defaults to False.
        projection_after_fusion (bool): The 3x3 ``project`` conv after the last fusion
            block (official DINOv3 ``projection_after_fusion``); False leaves it out (no
            ``project.*`` keys). Defaults to True.
        n_hidden_channels (int): Hidden width of the output block ``conv_depth``.
            Defaults to 32.
        output_align_corners (bool): ``align_corners`` of the upsampling in
            ``conv_depth`` (see :class:`DepthOutputBlock`). Defaults to True (official).
        **kwargs: :class:`DepthBaseDecodeHead` arguments.
    """

    def __init__(self,
                 embed_dims: int = 768,
                 post_process_channels: Sequence[int] = (96, 192, 384, 768),
                 readout_type: str = 'project',
                 patch_size: int = 14,
                 expand_channels: bool = False,
                 in_index: Sequence[int] = (0, 1, 2, 3),
                 channels: int = 256,
                 in_channels: Optional[Sequence[int]] = None,
                 act_cfg: dict = dict(type='ReLU'),
                 norm_cfg: Optional[dict] = None,
                 use_bias: bool = False,
                 projection_after_fusion: bool = True,
                 n_hidden_channels: int = 32,
                 output_align_corners: bool = True,
                 **kwargs) -> None:
        if len(in_index) != 4 or len(post_process_channels) != 4:
            raise ValueError('DPTDepthHead needs exactly four backbone layers: got in_index='
                             f'{list(in_index)}, post_process_channels='
                             f'{list(post_process_channels)}.')
        if in_channels is None:
            in_channels = [embed_dims] * 4
        super().__init__(in_channels=list(in_channels), channels=channels,
                         in_index=list(in_index), input_transform='multiple_select', **kwargs)
        self.embed_dims = embed_dims
        self.readout_type = readout_type
        self.expand_channels = expand_channels
        self.act_cfg = act_cfg
        self.norm_cfg = norm_cfg
        self.reassemble_blocks = ReassembleBlocks(embed_dims, list(post_process_channels),
                                                  readout_type, patch_size)
        self.post_process_channels = [
            int(c * 2**i) if expand_channels else int(c)
            for i, c in enumerate(post_process_channels)
        ]
        self.convs = nn.ModuleList([
            ConvModule(c, channels, kernel_size=3, padding=1, act_cfg=None, bias=False)
            for c in self.post_process_channels
        ])
        self.fusion_blocks = nn.ModuleList(
            [FeatureFusionBlock(channels, act_cfg, norm_cfg) for _ in range(4)])
        # The deepest block has nothing to fuse with; the official head drops its first
        # residual unit (no parameters under fusion_blocks.0.res_conv_unit1).
        self.fusion_blocks[0].res_conv_unit1 = None
        self.use_bias = use_bias
        if use_bias:
            for block in self.fusion_blocks:
                for unit in (block.res_conv_unit1, block.res_conv_unit2):
                    if unit is not None:
                        _with_conv_bias(unit, act_cfg, norm_cfg)
        self.projection_after_fusion = projection_after_fusion
        self.project = (ConvModule(channels, channels, kernel_size=3, padding=1,
                                   norm_cfg=norm_cfg)
                        if projection_after_fusion else nn.Identity())
        self.conv_depth = DepthOutputBlock(channels, self.n_bins if self.classify else 1,
                                           n_hidden_channels=n_hidden_channels,
                                           align_corners=output_align_corners)

    def _pairs(self, inputs: Sequence) -> List:
        pairs = []
        for x in self._select_inputs(inputs):
            if isinstance(x, (tuple, list)):
                pairs.append(list(x))
            elif self.readout_type == 'ignore':
                pairs.append([x, None])
            else:
                raise ValueError(f"DPTDepthHead with readout_type='{self.readout_type}' needs "
                                 "(map, cls_token) backbone outputs: set out_type='cls_featmap' "
                                 "on the backbone, or readout_type='ignore'.")
        return pairs

    def forward(self, inputs: Sequence) -> Tensor:
        """Args:
            inputs (Sequence): Backbone outputs ((map, cls) pairs or maps).

        Returns:
            Tensor: (B, 1, 16*h', 16*w') depth for an (h, w) patch grid, where h' is h
            rounded up to even (the deepest layer is downsampled by a stride-2 conv, every
            fusion block upsamples x2, and the output block once more).
        """
        feats = self.reassemble_blocks(self._pairs(inputs))
        feats = [conv(f) for conv, f in zip(self.convs, feats)]
        out = self.fusion_blocks[0](feats[-1])
        for i in range(1, 4):
            out = self.fusion_blocks[i](out, feats[-(i + 1)])
        out = self.project(out)
        return self.depth_pred(out)
