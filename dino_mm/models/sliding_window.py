"""Sliding-window inference shared by the segmentors and depth estimators."""
from typing import Callable, Sequence

from torch import Tensor


def slide_average(inputs: Tensor, crop_size: Sequence[int], stride: Sequence[int],
                  out_channels: int, predict: Callable[[Tensor], Tensor]) -> Tensor:
    """Average ``predict`` over overlapping windows, as mmseg's ``slide_inference``.

    Windows of ``crop_size`` are placed every ``stride`` pixels; the last row / column is
    moved back inside the image, so every window is full-size when the image is at least
    that large.

    Args:
        inputs (Tensor): (B, C, H, W) images.
        crop_size (Sequence[int]): Window (h, w).
        stride (Sequence[int]): Step (h, w).
        out_channels (int): Channels of ``predict``'s output.
        predict (Callable): Maps a (B, C, h, w) window to (B, out_channels, h, w).

    Returns:
        Tensor: (B, out_channels, H, W) average of the window predictions.
    """
    h_stride, w_stride = stride
    h_crop, w_crop = crop_size
    batch_size, _, h_img, w_img = inputs.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = inputs.new_zeros((batch_size, out_channels, h_img, w_img))
    count = inputs.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += predict(inputs[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count
