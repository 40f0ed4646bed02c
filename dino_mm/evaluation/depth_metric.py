"""Monocular depth metrics (AbsRel, SqRel, RMSE, RMSE-log, log10, delta thresholds, SILog)
with the standard NYU Eigen and KITTI Garg / Eigen evaluation crops.

Metrics are computed per image over its valid pixels and averaged over images, the
protocol of the official depth evaluation (and of the BTS / Monocular-Depth-Estimation
toolboxes it derives from).
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from dino_mm.registry import METRICS

__all__ = ['DepthMetric', 'depth_eval_mask', 'compute_depth_metrics', 'DEPTH_CROPS']

# Crop boxes as fractions of the image height / width (y1, y2, x1, x2).
DEPTH_CROPS = {
    # Eigen crop for NYU: rows 45:471, cols 41:601 of the 480x640 images.
    'nyu_eigen': (45 / 480, 471 / 480, 41 / 640, 601 / 640),
    # Garg et al. crop for KITTI (standard for the Eigen split).
    'kitti_garg': (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    # Eigen et al. crop for KITTI.
    'kitti_eigen': (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}
METRIC_NAMES = ('a1', 'a2', 'a3', 'abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10', 'silog')


def depth_eval_mask(gt: np.ndarray, min_depth: float, max_depth: float,
                    crop: Optional[str] = None) -> np.ndarray:
    """Pixels that count: ``min_depth < gt < max_depth`` inside the crop.

    Args:
        gt (np.ndarray): (H, W) ground-truth depth.
        min_depth (float): Exclusive lower bound.
        max_depth (float): Exclusive upper bound.
        crop (str, optional): None or a key of ``DEPTH_CROPS``; the box is scaled to the
            actual (H, W).
    """
    mask = (gt > min_depth) & (gt < max_depth)
    if crop is None:
        return mask
    if crop not in DEPTH_CROPS:
        raise ValueError(f'Unknown depth eval crop {crop!r}; use one of {sorted(DEPTH_CROPS)} '
                         'or None.')
    h, w = gt.shape
    fy1, fy2, fx1, fx2 = DEPTH_CROPS[crop]
    box = np.zeros_like(mask)
    box[int(fy1 * h):int(fy2 * h), int(fx1 * w):int(fx2 * w)] = True
    return mask & box


def compute_depth_metrics(gt: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """Depth metrics of matching 1-D arrays of valid ground truth and (positive) predictions."""
    gt = gt.astype(np.float64)
    pred = pred.astype(np.float64)
    ratio = np.maximum(gt / pred, pred / gt)
    diff = pred - gt
    log_diff = np.log(pred) - np.log(gt)
    return dict(
        a1=float((ratio < 1.25).mean()),
        a2=float((ratio < 1.25**2).mean()),
        a3=float((ratio < 1.25**3).mean()),
        abs_rel=float(np.mean(np.abs(diff) / gt)),
        sq_rel=float(np.mean(diff**2 / gt)),
        rmse=float(np.sqrt(np.mean(diff**2))),
        rmse_log=float(np.sqrt(np.mean(log_diff**2))),
        log10=float(np.mean(np.abs(np.log10(pred) - np.log10(gt)))),
        # Scale-invariant log error in the KITTI-benchmark convention (x100).
        silog=float(np.sqrt(max(np.mean(log_diff**2) - np.mean(log_diff)**2, 0.0)) * 100),
    )


def sample_maps(sample, metric: str, loader: str = 'dino_mm.LoadDepthMap') -> tuple:
    """(prediction, ground truth, image path) of one data sample (mmseg ``SegDataSample`` or
    its dict), the maps as float64 arrays of the same shape; errors name the sample."""
    get = sample.get if isinstance(sample, dict) else (lambda k: getattr(sample, k, None))
    pred, gt = get('pred_depth_map'), get('gt_depth_map')
    name = get('img_path')
    if pred is None or gt is None:
        raise KeyError(f'{metric} needs pred_depth_map and gt_depth_map in every sample '
                       f'({name}); load the ground truth in the test pipeline ({loader}).')
    pred, gt = DepthMetric._array(pred), DepthMetric._array(gt)
    if pred.shape != gt.shape:
        raise ValueError(f'{metric}: prediction {pred.shape} and ground truth {gt.shape} '
                         f'differ for {name}; load the ground truth at the original image '
                         'size (no Resize on gt in the test pipeline).')
    return pred, gt, name


@METRICS.register_module()
class DepthMetric(BaseMetric):
    """Depth estimation metric for mmengine evaluators.

    Reads ``pred_depth_map`` and ``gt_depth_map`` of each data sample (mmseg
    ``SegDataSample`` layout). Predictions are clipped to ``[min_depth, max_depth]`` before
    the metrics (BTS protocol), so a prediction of 0 cannot produce infinities.

    Args:
        min_depth (float): Ground truth must exceed this. Defaults to 1e-3.
        max_depth (float): Ground truth must be below this. Defaults to 10.
        crop (str, optional): 'nyu_eigen', 'kitti_garg', 'kitti_eigen' or None.
            Defaults to None.
        metrics (Sequence[str], optional): Subset of ``METRIC_NAMES`` to report.
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str, optional): Metric name prefix. Defaults to None ('depth').
    """

    default_prefix = 'depth'

    def __init__(self,
                 min_depth: float = 1e-3,
                 max_depth: float = 10.0,
                 crop: Optional[str] = None,
                 metrics: Optional[Sequence[str]] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if crop is not None and crop not in DEPTH_CROPS:
            raise ValueError(f'DepthMetric: unknown crop {crop!r}; use one of '
                             f'{sorted(DEPTH_CROPS)} or None.')
        metrics = tuple(metrics or METRIC_NAMES)
        unknown = set(metrics) - set(METRIC_NAMES)
        if unknown:
            raise ValueError(f'DepthMetric: unknown metrics {sorted(unknown)}; '
                             f'available: {METRIC_NAMES}.')
        if not 0 <= min_depth < max_depth:
            raise ValueError(f'DepthMetric: need 0 <= min_depth < max_depth, got '
                             f'({min_depth}, {max_depth}).')
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.crop = crop
        self.metric_names = metrics

    @staticmethod
    def _array(x) -> np.ndarray:
        if isinstance(x, dict):
            x = x['data']
        elif hasattr(x, 'data') and not isinstance(x, np.ndarray):
            x = x.data
        if hasattr(x, 'detach'):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=np.float64).squeeze()

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            pred, gt, name = sample_maps(sample, 'DepthMetric')
            mask = depth_eval_mask(gt, self.min_depth, self.max_depth, self.crop)
            if not mask.any():
                MMLogger.get_current_instance().warning(
                    f'DepthMetric: no valid ground-truth pixel in {name}; image skipped.')
                continue
            pred = np.clip(pred[mask], self.min_depth, self.max_depth)
            self.results.append(compute_depth_metrics(gt[mask], pred))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        if not results:
            raise RuntimeError('DepthMetric: no image with valid ground truth was evaluated.')
        return OrderedDict(
            (k, float(np.mean([r[k] for r in results]))) for k in self.metric_names)
