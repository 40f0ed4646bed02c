"""Box helpers of the DINOv3 Plain-DETR detector (absolute-pixel reparameterisation).

The released detector regresses boxes as deltas of absolute-pixel ``(cx, cy, w, h)``
reference boxes. mmdet's ``DeltaXYWHBBoxCoder`` decodes deltas of *xyxy* proposals with
means/stds and a different clamp, so the decoding used by the official model is written
here; the box-format conversions are mmdet's.
"""
import math
from typing import Optional, Tuple

import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh

__all__ = ['delta_to_box', 'delta_to_cxcywh', 'box_to_delta', 'bbox_cxcywh_to_xyxy',
           'bbox_xyxy_to_cxcywh', 'sine_box_embedding']

# Largest |log(scale)| of a width/height delta, as in the official model (16/1000 ratio).
_MAX_LOG_RATIO = abs(math.log(16 / 1000))


def delta_to_box(ref_cxcywh: torch.Tensor, deltas: torch.Tensor,
                 max_shape: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                 ) -> torch.Tensor:
    """Decode ``(dx, dy, dw, dh)`` deltas against reference boxes into xyxy boxes.

    ``center = ref_center + ref_wh * d_xy`` and ``wh = ref_wh * exp(clamp(d_wh))``;
    the result is optionally clipped to the valid (unpadded) image extent.

    Args:
        ref_cxcywh (Tensor): (..., 4) reference boxes, absolute ``(cx, cy, w, h)``.
        deltas (Tensor): (..., 4) regression output.
        max_shape (tuple[Tensor, Tensor], optional): ``(valid_h, valid_w)`` per image,
            each broadcastable to ``(..., 1)`` (e.g. shape (B, 1, 1)).

    Returns:
        Tensor: (..., 4) boxes, absolute ``(x1, y1, x2, y2)``.
    """
    ref_xy, ref_wh = ref_cxcywh[..., :2], ref_cxcywh[..., 2:]
    center = ref_xy + ref_wh * deltas[..., :2]
    size = ref_wh * deltas[..., 2:].clamp(min=-_MAX_LOG_RATIO, max=_MAX_LOG_RATIO).exp()
    boxes = torch.cat([center - 0.5 * size, center + 0.5 * size], dim=-1)
    if max_shape is not None:
        valid_h, valid_w = max_shape
        xs = boxes[..., 0::2].clamp(min=0)
        ys = boxes[..., 1::2].clamp(min=0)
        xs = torch.minimum(xs, valid_w.to(xs.dtype))
        ys = torch.minimum(ys, valid_h.to(ys.dtype))
        boxes = torch.stack([xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]], dim=-1)
    return boxes


def delta_to_cxcywh(ref_cxcywh: torch.Tensor, deltas: torch.Tensor,
                    max_shape: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                    ) -> torch.Tensor:
    """:func:`delta_to_box` returned as absolute ``(cx, cy, w, h)``."""
    return bbox_xyxy_to_cxcywh(delta_to_box(ref_cxcywh, deltas, max_shape))


def box_to_delta(ref_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """Regression target of the training loss: the deltas from reference to target boxes.

    ``d_xy = (t_xy - r_xy) / (r_wh + 0.1)`` and ``d_wh = log(t_wh / (r_wh + 0.1))``,
    computed in fp32. The official encoder adds 0.1 pixel to the reference size (its
    decoder, :func:`delta_to_box`, does not), so a delta of 0 decodes to the reference
    box only up to that 0.1 pixel; the released detector was trained with these targets.

    Args:
        ref_cxcywh (Tensor): (..., 4) reference boxes, absolute ``(cx, cy, w, h)``.
        target_cxcywh (Tensor): (..., 4) target boxes, broadcastable against
            ``ref_cxcywh`` (e.g. (Q, 1, 4) against (1, M, 4) for a matching cost).

    Returns:
        Tensor: (..., 4) deltas ``(dx, dy, dw, dh)``.
    """
    ref, target = ref_cxcywh.float(), target_cxcywh.float()
    size = ref[..., 2:] + 0.1
    return torch.cat([(target[..., :2] - ref[..., :2]) / size,
                      torch.log(target[..., 2:] / size)], dim=-1)


def sine_box_embedding(boxes: torch.Tensor, dim: int, temperature: float = 10000.0
                       ) -> torch.Tensor:
    """Sine/cosine embedding of each of the 4 box coordinates (``dim / 2`` features each).

    The coordinates are multiplied by 2*pi as they are (the official model feeds
    absolute pixels here, not normalised ones); within each coordinate the features
    alternate sin, cos of ``coord / temperature ** (2 * (i // 2) / (dim / 2))``.

    Args:
        boxes (Tensor): (B, N, 4) boxes.
        dim (int): Transformer width; the output has ``2 * dim`` features.
        temperature (float): Frequency base. Defaults to 10000.

    Returns:
        Tensor: (B, N, 2 * dim) embedding.
    """
    feats = dim // 2
    idx = torch.arange(feats, dtype=torch.float32, device=boxes.device)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode='floor') / feats)
    angles = (boxes.float() * 2 * math.pi)[..., None] / freqs  # B, N, 4, feats
    emb = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1)
    return emb.flatten(2)
