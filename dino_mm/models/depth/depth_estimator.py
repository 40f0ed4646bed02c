"""Depth estimator for frozen DINO backbones, built on mmseg's ``DepthEstimator``.

Fixes and additions over mmseg 1.2.2 (see docs/setup.md, "Known problems of the pinned
packages"):

* ``inference`` dispatch: mmseg runs whole-image inference even when ``mode='slide'`` (an
  ``if``/``if``/``else`` chain overwrites the slide result). Here 'whole' and 'slide' both
  work, and ``flip=True`` (or ``mode='slide_flip'``) averages with the flipped prediction.
* Official center padding: the input is zero-padded (after normalisation) to a multiple of
  the patch size, the padding split floor/ceil with the smaller half on the left/top, like
  the ``CenterPadding`` pre-hook of the official depthers. As in the official code the head
  output covers the padded image and is resized as a whole to the unpadded input size.
* Predictions are clamped to ``[min_depth, max_depth]`` of the head (official
  ``encode_decode``), before resizing.
* The backbone can be frozen: no gradients and always in eval mode (DINOv3 RoPE applies a
  random coordinate augmentation in train mode, which must not run in frozen probing).
* :class:`DepthDataPreProcessor` pads depth maps with 0 (= invalid) instead of mmseg's 255.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.models.segmentors import DepthEstimator
from torch import Tensor

from dino_mm.registry import MODELS
from dino_mm.utils.scope import builds_in_scope
from ..segmentation.center_padding import FrozenPaddedBackboneMixin


@MODELS.register_module()
class DepthDataPreProcessor(SegDataPreProcessor):
    """mmseg ``SegDataPreProcessor`` whose depth padding value is 0 (invalid depth).

    mmseg pads ``gt_depth_map`` with ``seg_pad_val`` (255 by default), which would become
    255-metre ground truth. Any other value than 0 is refused.

    Args:
        mean (Sequence[float]): Pixel mean (0-255 scale). Defaults to ImageNet.
        std (Sequence[float]): Pixel std (0-255 scale). Defaults to ImageNet.
        bgr_to_rgb (bool): Convert BGR (cv2-loaded) images to RGB. Defaults to True.
        seg_pad_val (float): Must be 0. Defaults to 0.
        **kwargs: Other ``SegDataPreProcessor`` arguments (size, size_divisor, pad_val, ...).
            Without ``size`` / ``size_divisor``, training batches are padded (bottom/right)
            to the largest image, i.e. ``size_divisor=1``.
    """

    def __init__(self,
                 mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375),
                 bgr_to_rgb: bool = True,
                 seg_pad_val: float = 0,
                 **kwargs) -> None:
        if seg_pad_val != 0:
            raise ValueError(f'DepthDataPreProcessor: seg_pad_val={seg_pad_val} would pad depth '
                             'maps with a real-looking depth; depth padding must be 0 (invalid).')
        if kwargs.get('size') is None and kwargs.get('size_divisor') is None:
            # mmseg's stack_batch needs one of them in training; patch-size padding is done
            # by the estimator (center padding), so batches are only padded to a common size.
            kwargs['size_divisor'] = 1
        super().__init__(mean=mean, std=std, bgr_to_rgb=bgr_to_rgb, seg_pad_val=0, **kwargs)


@MODELS.register_module()
@builds_in_scope('mmseg')
class DinoDepthEstimator(FrozenPaddedBackboneMixin, DepthEstimator):
    """Monocular depth estimator: (frozen) DINO backbone + depth decode head.

    Args:
        backbone (dict): Backbone config, e.g. ``dino_mm.DinoVisionTransformer`` with
            ``out_indices`` and ``out_type='cls_featmap'``.
        decode_head (dict): ``dino_mm.LinearDepthHead`` or ``dino_mm.DPTDepthHead`` config.
        neck (dict, optional): Neck config. Defaults to None.
        auxiliary_head (dict, optional): Auxiliary head config. Defaults to None.
        train_cfg (dict, optional): Training config. Defaults to None.
        test_cfg (dict, optional): ``dict(mode='whole' | 'slide' | 'slide_flip', flip=False,
            crop_size=(h, w), stride=(h, w))``. Defaults to whole-image inference.
        data_preprocessor (dict, optional): Defaults to :class:`DepthDataPreProcessor`.
        pad_to_patch (int | str | None): Center-pad inputs to a multiple of this; 'auto'
            takes ``backbone.patch_size``; None/0 disables. Defaults to 'auto'.
        freeze_backbone (bool): No gradients through the backbone and keep it in eval mode.
            Defaults to True.
        clamp_depth (bool): Clamp predictions to the head's depth range. Defaults to True.
        pretrained (str, optional): mmseg legacy argument. Defaults to None.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 neck: Optional[dict] = None,
                 auxiliary_head: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 pad_to_patch: Union[int, str, None] = 'auto',
                 freeze_backbone: bool = True,
                 clamp_depth: bool = True,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='dino_mm.DepthDataPreProcessor')
        test_cfg = ConfigDict(test_cfg if test_cfg is not None else dict(mode='whole'))
        test_cfg.setdefault('mode', 'whole')
        if test_cfg.mode not in ('whole', 'slide', 'slide_flip'):
            raise ValueError(f"test_cfg.mode must be 'whole', 'slide' or 'slide_flip', "
                             f'got {test_cfg.mode!r}.')
        if test_cfg.mode != 'whole':
            for key in ('crop_size', 'stride'):
                if key not in test_cfg:
                    raise KeyError(f"test_cfg.mode='{test_cfg.mode}' needs test_cfg.{key}=(h, w).")
        super().__init__(backbone=backbone, decode_head=decode_head, neck=neck,
                         auxiliary_head=auxiliary_head, train_cfg=train_cfg, test_cfg=test_cfg,
                         data_preprocessor=data_preprocessor, pretrained=pretrained,
                         init_cfg=init_cfg)
        if pad_to_patch == 'auto':
            pad_to_patch = getattr(self.backbone, 'patch_size', None)
            if isinstance(pad_to_patch, (tuple, list)):
                pad_to_patch = pad_to_patch[0]
        self.pad_to_patch = int(pad_to_patch or 0)
        self.freeze_backbone = freeze_backbone
        self.clamp_depth = clamp_depth
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()


    def extract_feat(self, inputs: Tensor,
                     batch_img_metas: Optional[List[dict]] = None) -> Sequence:
        """Backbone (+ neck) features of center-padded inputs."""
        return self.padded_backbone_features(inputs, self.pad_to_patch)

    def encode_decode(self, inputs: Tensor, batch_img_metas: Optional[List[dict]] = None) -> Tensor:
        """Depth (B, 1, H, W) at the size of ``inputs``."""
        depth = self.decode_head(self.extract_feat(inputs, batch_img_metas))
        if self.clamp_depth:
            depth = depth.clamp(min=self.decode_head.min_depth, max=self.decode_head.max_depth)
        return F.interpolate(depth, size=inputs.shape[-2:], mode='bilinear',
                             align_corners=self.align_corners)

    def _encode_decode_tta(self, inputs: Tensor, batch_img_metas: Optional[List[dict]]) -> Tensor:
        depth = self.encode_decode(inputs, batch_img_metas)
        if self.test_cfg.get('flip', False) or self.test_cfg.mode == 'slide_flip':
            flipped = self.encode_decode(inputs.flip(dims=(3, )), batch_img_metas)
            depth = (depth + flipped.flip(dims=(3, ))) / 2.0
        return depth

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Sliding-window inference; overlapping windows are averaged."""
        from dino_mm.models.sliding_window import slide_average
        return slide_average(inputs, self.test_cfg.crop_size, self.test_cfg.stride, 1,
                             lambda crop: self._encode_decode_tta(crop, batch_img_metas))

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Whole-image or sliding-window inference (with optional flip averaging)."""
        if self.test_cfg.mode == 'whole':
            return self._encode_decode_tta(inputs, batch_img_metas)
        return self.slide_inference(inputs, batch_img_metas)

    @torch.no_grad()
    def estimate_depth(self, inputs: Tensor) -> Tensor:
        """Depth (B, 1, H, W) in metres for normalised images (B, 3, H, W); a convenience for
        hub users (the official depthers are called through ``whole_inference``)."""
        metas = [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                      pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])] * inputs.shape[0]
        return self.inference(inputs, metas)
