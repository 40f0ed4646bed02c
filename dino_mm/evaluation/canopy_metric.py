"""Canopy-height metrics: MAE, RMSE, bias, R² per pixel and R² of block means.

These are the metrics of Meta's canopy-height evaluation (the NEON test of the first
high-resolution canopy height maps, whose inference code is the reference for CHMv2):

* ``mae``, ``rmse`` and ``bias`` (mean of prediction - ground truth) in metres and ``r2``
  (1 - SS_res / SS_tot), all over every valid pixel of the test set pooled together (not
  averaged per image), predictions clamped at 0 m (the official ``relu``);
* ``r2_block``: R² of block means, the maps cut into ``block`` x ``block`` pixel blocks
  after dropping the first ``border`` rows and columns (the official 50 px average pooling
  after a 3 px border); partial blocks at the right / bottom edge are dropped, as pooling
  does, and so are blocks with an invalid pixel.

Ground truth 0 means "no data" (nodata or masked pixels, see
:class:`dino_mm.datasets.depth.LoadCanopyHeightMap`, which stores bare ground as a small
positive height). Written here because neither mmseg nor mmengine has canopy-height metrics.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from dino_mm.evaluation.depth_metric import sample_maps
from dino_mm.registry import METRICS

__all__ = ['CanopyHeightMetric', 'block_means']


def block_means(pred: np.ndarray, gt: np.ndarray, block: int,
                border: int) -> Tuple[np.ndarray, np.ndarray]:
    """Means of ``pred`` and ``gt`` over the complete, fully valid (gt > 0) ``block`` x
    ``block`` blocks of the maps without their first ``border`` rows and columns."""
    pred, gt = pred[border:, border:], gt[border:, border:]
    nh, nw = gt.shape[0] // block, gt.shape[1] // block
    if nh == 0 or nw == 0:
        return np.zeros(0), np.zeros(0)

    def blocks(x):
        return x[:nh * block, :nw * block].reshape(nh, block, nw, block).swapaxes(1, 2).reshape(
            nh * nw, block * block)

    p, g = blocks(pred), blocks(gt)
    full = (g > 0).all(axis=1)
    return p[full].mean(axis=1), g[full].mean(axis=1)


def _r2(pred: np.ndarray, gt: np.ndarray) -> float:
    ss_tot = ((gt - gt.mean())**2).sum()
    return float(1.0 - ((pred - gt)**2).sum() / ss_tot) if ss_tot > 0 else float('nan')


@METRICS.register_module()
class CanopyHeightMetric(BaseMetric):
    """Canopy-height metrics for mmengine evaluators (``canopy/mae``, ``canopy/rmse``,
    ``canopy/bias``, ``canopy/r2``, ``canopy/r2_block``; see the module docstring).

    Reads ``pred_depth_map`` and ``gt_depth_map`` of each data sample, like
    :class:`~dino_mm.evaluation.DepthMetric`.

    Args:
        max_height (float, optional): Ground truth above it is ignored (None: keep all).
            Defaults to None.
        block (int): Block size of ``r2_block`` in pixels. Defaults to 50.
        border (int): Rows / columns dropped before the blocks. Defaults to 3.
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): Metric name prefix. Defaults to None ('canopy').
    """

    default_prefix = 'canopy'

    def __init__(self,
                 max_height: Optional[float] = None,
                 block: int = 50,
                 border: int = 3,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if block < 1 or border < 0:
            raise ValueError(f'CanopyHeightMetric: need block >= 1 and border >= 0, got '
                             f'block={block}, border={border}.')
        self.max_height = max_height
        self.block = int(block)
        self.border = int(border)

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            pred, gt, name = sample_maps(sample, 'CanopyHeightMetric',
                                         'dino_mm.LoadCanopyHeightMap')
            pred = np.maximum(pred, 0.0)
            if self.max_height is not None:
                gt = np.where(gt <= self.max_height, gt, 0.0)
            mask = gt > 0
            if not mask.any():
                MMLogger.get_current_instance().warning(
                    f'CanopyHeightMetric: no valid height in {name} (all nodata / masked); '
                    'tile skipped.')
                continue
            p, g = pred[mask], gt[mask]
            bp, bg = block_means(pred, gt, self.block, self.border)
            self.results.append(dict(
                n=int(mask.sum()), abs=float(np.abs(p - g).sum()), sq=float(((p - g)**2).sum()),
                diff=float((p - g).sum()), gt=float(g.sum()), gt2=float((g**2).sum()),
                block_pred=bp, block_gt=bg))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not results:
            raise RuntimeError('CanopyHeightMetric: no tile with a valid height was evaluated.')
        n = sum(r['n'] for r in results)
        sq = sum(r['sq'] for r in results)
        mean_gt = sum(r['gt'] for r in results) / n
        ss_tot = sum(r['gt2'] for r in results) - n * mean_gt**2
        bp = np.concatenate([r['block_pred'] for r in results])
        bg = np.concatenate([r['block_gt'] for r in results])
        if bg.size < 2:
            MMLogger.get_current_instance().warning(
                f'CanopyHeightMetric: {bg.size} complete valid {self.block} px block(s); '
                'r2_block is NaN (use larger tiles or a smaller block).')
        return OrderedDict(
            mae=sum(r['abs'] for r in results) / n,
            rmse=float(np.sqrt(sq / n)),
            bias=sum(r['diff'] for r in results) / n,
            r2=float(1.0 - sq / ss_tot) if ss_tot > 0 else float('nan'),
            r2_block=_r2(bp, bg) if bg.size >= 2 else float('nan'))
