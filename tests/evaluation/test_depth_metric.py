"""DepthMetric against an independent numpy reference (masks, crops, per-image averaging)."""
import numpy as np
import pytest
import torch

from dino_mm.evaluation.depth_metric import DepthMetric, depth_eval_mask


def _reference(gts, preds, min_d, max_d, box):
    """Plain re-statement of the standard protocol; ``box`` = (y1, y2, x1, x2) pixel bounds."""
    per_image = []
    for gt, pred in zip(gts, preds):
        keep = np.zeros(gt.shape, bool)
        y1, y2, x1, x2 = box(gt.shape)
        keep[y1:y2, x1:x2] = True
        keep &= (gt > min_d) & (gt < max_d)
        g = gt[keep].astype(np.float64)
        p = np.clip(pred[keep].astype(np.float64), min_d, max_d)
        thr = np.maximum(g / p, p / g)
        err = np.log(p) - np.log(g)
        per_image.append({
            'a1': np.mean(thr < 1.25), 'a2': np.mean(thr < 1.5625), 'a3': np.mean(thr < 1.953125),
            'abs_rel': np.mean(np.abs(g - p) / g), 'sq_rel': np.mean((g - p)**2 / g),
            'rmse': np.sqrt(np.mean((g - p)**2)), 'rmse_log': np.sqrt(np.mean(err**2)),
            'log10': np.mean(np.abs(np.log10(g) - np.log10(p))),
            'silog': 100 * np.sqrt(np.mean(err**2) - np.mean(err)**2)})
    return {k: np.mean([m[k] for m in per_image]) for k in per_image[0]}


def _samples(gts, preds):
    return [dict(pred_depth_map=dict(data=torch.from_numpy(p)[None]),
                 gt_depth_map=dict(data=torch.from_numpy(g)[None]), img_path=f'{i}.png')
            for i, (g, p) in enumerate(zip(gts, preds))]


def _run(metric, gts, preds):
    metric.process({}, _samples(gts, preds))
    return metric.compute_metrics(metric.results)


@pytest.mark.parametrize('crop,shape,box,max_d', [
    ('nyu_eigen', (480, 640), lambda s: (45, 471, 41, 601), 10.0),
    ('nyu_eigen', (240, 320), lambda s: (22, 235, 20, 300), 10.0),
    ('kitti_garg', (375, 1242), lambda s: (153, 371, 44, 1197), 80.0),
    (None, (50, 60), lambda s: (0, s[0], 0, s[1]), 10.0),
])
def test_metric_matches_numpy_reference(crop, shape, box, max_d):
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(3):
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        gt = (0.5 + max_d * 0.8 * (yy / shape[0]) * (0.5 + 0.5 * xx / shape[1])).astype(np.float32)
        gt[rng.random(shape) < 0.2] = 0  # missing measurements
        gt[0, 0] = max_d + 5  # beyond range: excluded
        pred = (gt * rng.uniform(0.7, 1.4, shape)).astype(np.float32)
        pred[rng.random(shape) < 0.01] = 0  # clipped to min depth, not inf
        gts.append(gt)
        preds.append(pred)
    got = _run(DepthMetric(max_depth=max_d, crop=crop), gts, preds)
    ref = _reference(gts, preds, 1e-3, max_d, box)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert 0 < got['a1'] < 1 and got['rmse'] > 0


def test_perfect_prediction():
    gt = np.linspace(0.5, 9.5, 480 * 640, dtype=np.float32).reshape(480, 640)
    got = _run(DepthMetric(crop='nyu_eigen'), [gt], [gt.copy()])
    assert got['rmse'] == pytest.approx(0, abs=1e-6)
    assert got['abs_rel'] == pytest.approx(0, abs=1e-7)
    assert got['a1'] == got['a2'] == got['a3'] == 1.0


def test_crop_boxes_scaled():
    gt = np.ones((480, 640), np.float32)
    m = depth_eval_mask(gt, 1e-3, 10, 'nyu_eigen')
    assert m.sum() == (471 - 45) * (601 - 41)
    assert m[45, 41] and not m[44, 41] and not m[45, 40] and m[470, 600] and not m[471, 600]


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match='unknown crop'):
        DepthMetric(crop='eigen')
    metric = DepthMetric()
    with pytest.raises(ValueError, match='differ'):
        metric.process({}, _samples([np.ones((4, 4), np.float32)], [np.ones((4, 5), np.float32)]))
