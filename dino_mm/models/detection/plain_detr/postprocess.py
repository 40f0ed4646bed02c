"""Turn Plain-DETR outputs into per-image scored boxes (official ``PostProcess``)."""
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .box_ops import bbox_cxcywh_to_xyxy

__all__ = ['PlainDETRPostProcess']


class PlainDETRPostProcess(nn.Module):
    """Top-k over sigmoid scores of all (query, class) pairs; boxes to image pixels.

    With the absolute-coordinate parameterisation the predicted boxes are already in
    pixels of the network input: they are converted to xyxy, clipped to each image's
    unpadded size and scaled by ``original_size / input_size``.

    Args:
        topk (int): Detections kept per image (1500 for the released detector).
    """

    def __init__(self, topk: int = 100) -> None:
        super().__init__()
        self.topk = topk

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], target_sizes: torch.Tensor,
                original_sizes: Optional[torch.Tensor] = None) -> List[Dict[str, torch.Tensor]]:
        """Per-image ``scores`` (K,), ``labels`` (K,) and xyxy ``boxes`` (K, 4).

        Args:
            outputs (dict): ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4)
                absolute cxcywh.
            target_sizes (Tensor): (B, 2) ``(h, w)`` of each unpadded network input.
            original_sizes (Tensor, optional): (B, 2) ``(h, w)`` to scale the boxes to.
                Defaults to ``target_sizes``.

        Returns:
            list[dict]: One dict per image; ``labels`` are class indices of the logits
            (COCO category ids for the released 91-way head).
        """
        logits, boxes = outputs['pred_logits'], outputs['pred_boxes']
        if original_sizes is None:
            original_sizes = target_sizes
        b, _, num_classes = logits.shape
        k = min(self.topk, logits.shape[1] * num_classes)
        scores, index = torch.topk(logits.sigmoid().flatten(1), k, dim=1)
        query = torch.div(index, num_classes, rounding_mode='floor')
        labels = index % num_classes
        boxes = bbox_cxcywh_to_xyxy(boxes.float())
        boxes = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))
        size_h = target_sizes[:, 0].to(boxes)[:, None]
        size_w = target_sizes[:, 1].to(boxes)[:, None]
        xs = torch.minimum(boxes[..., 0::2].clamp(min=0), size_w[..., None])
        ys = torch.minimum(boxes[..., 1::2].clamp(min=0), size_h[..., None])
        scale = (original_sizes.to(boxes) / target_sizes.to(boxes))  # (B, 2) = h, w
        xs = xs * scale[:, None, None, 1]
        ys = ys * scale[:, None, None, 0]
        boxes = torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], dim=-1)
        return [dict(scores=s, labels=l, boxes=bx) for s, l, bx in zip(scores, labels, boxes)]
