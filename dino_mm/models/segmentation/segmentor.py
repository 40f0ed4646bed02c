"""Encoder-decoder segmentor for DINO backbones.

Adds to :class:`mmseg.models.EncoderDecoder` what the official DINOv2 / DINOv3
segmentation evaluations do around the backbone and what mmseg 1.2.2 lacks:

* center padding of the (normalised) input to a multiple of the patch size;
* a frozen backbone that stays in ``eval()`` even when the model trains (DINOv3 RoPE
  randomises coordinates in train mode, and the probe protocol never updates the
  backbone statistics) and runs without autograd;
* a sliding window that gives every crop its own ``img_shape`` *and* ``pad_shape``,
  which mmseg's ``Mask2FormerHead`` needs (mmseg only rewrites ``img_shape`` of the
  first sample, so the head upsamples crop masks to the full padded size and fails);
* optional in-model multi-scale + flip test-time augmentation (the "ms" protocol):
  ``test_cfg=dict(mode='slide', ..., img_ratios=[1.0, 1.32, ...], flip=True)``.
"""
import copy
from typing import List, Optional, Sequence

import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from torch import Tensor

from dino_mm.registry import MODELS
from dino_mm.utils.scope import builds_in_scope
from .center_padding import FrozenPaddedBackboneMixin


@MODELS.register_module()
@builds_in_scope('mmseg')
class DinoEncoderDecoder(FrozenPaddedBackboneMixin, EncoderDecoder):
    """mmseg ``EncoderDecoder`` with DINO-specific input handling.

    Args:
        *args: Positional arguments of :class:`mmseg.models.EncoderDecoder`.
        freeze_backbone (bool): Freeze every backbone parameter, keep the backbone in
            eval mode during training and extract features under ``torch.no_grad``
            (linear / ms probes). Defaults to False.
        pad_to_patch (bool | int): Center-pad inputs to a multiple of this size; True
            reads ``backbone.patch_size``; False disables padding. Defaults to True.
        **kwargs: Keyword arguments of :class:`mmseg.models.EncoderDecoder`
            (``backbone``, ``decode_head``, ``test_cfg``, ``data_preprocessor`` ...).
            ``test_cfg`` additionally accepts ``img_ratios`` (list of float) and
            ``flip`` (bool) for multi-scale / flip test-time augmentation: class
            probabilities are averaged over all views, as the official mmseg-0.x
            ``aug_test`` does.
    """

    def __init__(self,
                 *args,
                 freeze_backbone: bool = False,
                 pad_to_patch=True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.freeze_backbone = bool(freeze_backbone)
        if pad_to_patch is True:
            patch = getattr(self.backbone, 'patch_size', None)
            if isinstance(patch, (tuple, list)):
                patch = patch[0]
            self.pad_multiple = int(patch) if patch else 0
        else:
            self.pad_multiple = int(pad_to_patch or 0)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()


    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        """Center-pad ``inputs`` and run the backbone (and neck)."""
        return self.padded_backbone_features(inputs, self.pad_multiple)

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Sliding-window inference with per-crop image metas.

        Args:
            inputs (Tensor): Batch (N, C, H, W).
            batch_img_metas (list[dict]): Meta information of each sample.

        Returns:
            Tensor: Logits (N, num_classes, H, W) averaged over overlapping crops.
        """
        from dino_mm.models.sliding_window import slide_average

        def predict(crop: Tensor) -> Tensor:
            crop_metas = []
            for meta in batch_img_metas:
                meta = dict(meta)
                # torch.Size marks the crop shape for mmseg's BaseDecodeHead;
                # pad_shape is what Mask2FormerHead upsamples its masks to.
                meta['img_shape'] = crop.shape[2:]
                meta['pad_shape'] = tuple(crop.shape[2:])
                crop_metas.append(meta)
            return self.encode_decode(crop, crop_metas)
        return slide_average(inputs, self.test_cfg['crop_size'], self.test_cfg['stride'],
                             self.out_channels, predict)

    def _single_view_inference(self, inputs: Tensor,
                               batch_img_metas: List[dict]) -> Tensor:
        if self.test_cfg.get('mode', 'whole') == 'slide':
            return self.slide_inference(inputs, batch_img_metas)
        return self.whole_inference(inputs, batch_img_metas)

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Slide / whole inference, with multi-scale + flip TTA when configured.

        Args:
            inputs (Tensor): Batch (N, C, H, W).
            batch_img_metas (list[dict]): Meta information of each sample.

        Returns:
            Tensor: (N, num_classes, H, W) logits (single view) or averaged class
            probabilities (test-time augmentation).
        """
        mode = self.test_cfg.get('mode', 'whole')
        if mode not in ('slide', 'whole'):
            raise ValueError(f'test_cfg.mode must be "slide" or "whole", got "{mode}"')
        ratios: Optional[Sequence[float]] = self.test_cfg.get('img_ratios', None)
        flip = bool(self.test_cfg.get('flip', False))
        if not ratios and not flip:
            return self._single_view_inference(inputs, batch_img_metas)

        h, w = inputs.shape[2:]
        probs = None
        n_views = 0
        for ratio in (ratios or [1.0]):
            size = (max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1))
            scaled = inputs if size == (h, w) else F.interpolate(
                inputs, size=size, mode='bilinear', align_corners=False)
            metas = []
            for meta in batch_img_metas:
                meta = copy.copy(meta)
                meta['img_shape'] = size
                meta['pad_shape'] = size
                metas.append(meta)
            for flipped in ((False, True) if flip else (False, )):
                view = scaled.flip(-1) if flipped else scaled
                logits = self._single_view_inference(view, metas)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode='bilinear',
                                           align_corners=self.align_corners)
                p = logits.softmax(dim=1)
                probs = p if probs is None else probs + p
                n_views += 1
        return probs / n_views
