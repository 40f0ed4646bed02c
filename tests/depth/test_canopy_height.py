"""Canopy-height tiles in the official layout (GeoTIFF heights in metres with nodata and a
mask band) and the canopy-height metrics of Meta's evaluation.

* ``dino_mm.LoadCanopyHeightMap`` returns the heights in metres, 0 where the file says
  nodata / masked, bare ground as 1 mm; PNG in centimetres still works;
* bad files are named with what to do (an RGB raster as height map, a mask of another
  size, centimetres read as metres, a tile of another size);
* ``dino_mm.CanopyHeightMetric`` equals scikit-learn's R² / MAE / MSE and torch's average
  pooling (the official block R²) on the same pixels.
"""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_mm.datasets.depth import CanopyHeightDataset, LoadCanopyHeightMap
from dino_mm.evaluation import CanopyHeightMetric
from tests.depth.canopy_tiles import synthetic_heights, write_chm, write_rgb, write_tile_set


def _load(chm_path, img_shape, **kwargs):
    t = LoadCanopyHeightMap(**kwargs)
    return t(dict(depth_map_path=str(chm_path), ori_shape=img_shape, depth_scale=1.0,
                  max_depth=96.0))


def test_geotiff_heights_nodata_and_cloud_mask(tmp_path, real_images):
    rgb = real_images['astronaut'][:48, :64]
    stored, mask, expected = synthetic_heights(rgb, seed=3)
    write_chm(tmp_path / 'chm.tif', stored, mask=mask)
    out = _load(tmp_path / 'chm.tif', (48, 64))
    gt = out['gt_depth_map']
    assert gt.dtype == np.float32 and gt.shape == (48, 64)
    assert 'gt_depth_map' in out['seg_fields']
    invalid = np.isnan(expected)
    assert invalid.sum() > 10 and (~mask).sum() > 0
    assert np.all(gt[invalid] == 0)
    ground = ~invalid & (expected == 0)
    assert ground.sum() > 10 and np.all(gt[ground] == np.float32(1e-3))
    canopy = ~invalid & (expected > 0)
    np.testing.assert_array_equal(gt[canopy], expected[canopy])


def test_float_geotiff_with_nan_nodata_and_negative_heights(tmp_path):
    heights = np.array([[12.5, -0.3, np.nan], [0.0, 30.25, 7.0]], np.float32)
    write_chm(tmp_path / 'chm.tif', heights, nodata='nan')
    gt = _load(tmp_path / 'chm.tif', (2, 3))['gt_depth_map']
    np.testing.assert_array_equal(gt, np.array([[12.5, 1e-3, 0], [1e-3, 30.25, 7.0]],
                                               np.float32))


def test_png_in_centimetres(tmp_path):
    cm = np.array([[0, 1250], [3000, 7]], np.uint16)
    cv2.imwrite(str(tmp_path / 'chm.png'), cm)
    gt = _load(tmp_path / 'chm.png', (2, 2), depth_scale=100.0)['gt_depth_map']
    np.testing.assert_allclose(gt, np.array([[0, 12.5], [30.0, 0.07]], np.float32))


def test_bad_files_are_named(tmp_path, real_images):
    rgb = real_images['coffee'][:32, :32]
    write_rgb(tmp_path / 'rgb.tif', rgb)
    with pytest.raises(ValueError, match=r'rgb\.tif.*one height band'):
        _load(tmp_path / 'rgb.tif', (32, 32))
    write_chm(tmp_path / 'small_mask.tif', np.zeros((32, 32), np.uint8), mask=np.ones((32, 32)))
    cm = np.full((32, 32), 2500, np.uint16)
    cm[:, :16] = 0  # ground keeps the smallest height plausible: only the tall trees tell
    write_chm(tmp_path / 'cm.tif', cm, nodata=None)
    with pytest.raises(ValueError, match=r'cm\.tif.*set depth_scale=100'):
        _load(tmp_path / 'cm.tif', (32, 32))
    assert _load(tmp_path / 'cm.tif', (32, 32), depth_scale=100.0)['gt_depth_map'].max() == 25
    with pytest.raises(ValueError, match=r'small_mask\.tif has size \(32, 32\) but its image'):
        _load(tmp_path / 'small_mask.tif', (40, 32))
    with pytest.raises(FileNotFoundError, match=r'missing\.tif'):
        _load(tmp_path / 'missing.tif', (32, 32))
    with pytest.raises(ValueError, match='ground_height must be > 0'):
        LoadCanopyHeightMap(ground_height=0)


def test_mask_of_another_size_is_named(tmp_path):
    import tifffile
    path = tmp_path / 'chm.tif'
    with tifffile.TiffWriter(str(path)) as tif:
        tif.write(np.ones((8, 8), np.uint8), photometric='minisblack')
        tif.write(np.ones((4, 4), bool), photometric='minisblack', subfiletype=1)
    with tifffile.TiffFile(str(path), mode='r+') as tif:
        tif.pages[1].tags['NewSubfileType'].overwrite(4)
    with pytest.raises(ValueError, match=r'chm\.tif: mask band \(4, 4\) and height band'):
        _load(path, (8, 8))


def test_dataset_reads_the_tile_list(tmp_path, real_images):
    tiles = write_tile_set(tmp_path, [real_images['astronaut'], real_images['coffee']])
    ds = CanopyHeightDataset(ann_file='test.txt', data_root=str(tmp_path), test_mode=True,
                             pipeline=[dict(type='mmcv.LoadImageFromFile'),
                                       dict(type='dino_mm.LoadCanopyHeightMap')])
    assert len(ds) == 2 and ds.metainfo['max_depth'] == 96.0
    sample = ds[1]
    np.testing.assert_array_equal(sample['img'][..., ::-1], tiles[1][0])  # BGR from GeoTIFF
    exp = tiles[1][1]
    gt = sample['gt_depth_map']
    assert np.all((gt == 0) == np.isnan(exp))
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(ValueError, match='empty.txt lists no usable sample'):
        CanopyHeightDataset(ann_file='empty.txt', data_root=str(tmp_path))


# ------------------------------------------------------------------------------ metrics
def _official_block_means(pred, gt, block, border):
    """The official block means: AvgPool2d(block) of the maps without ``border`` rows and
    columns (every block there is fully valid in this test)."""
    p = F.avg_pool2d(torch.from_numpy(pred[None, None, border:, border:]), block)
    g = F.avg_pool2d(torch.from_numpy(gt[None, None, border:, border:]), block)
    return p.flatten().numpy(), g.flatten().numpy()


def test_metric_equals_sklearn_and_average_pooling():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    rng = np.random.default_rng(0)
    gts = [rng.uniform(0.001, 40, (37, 45)), rng.uniform(0.001, 25, (29, 61))]
    preds = [g + rng.normal(0, 3, g.shape) for g in gts]
    metric = CanopyHeightMetric(block=8, border=3)
    metric.process(None, [dict(pred_depth_map=torch.from_numpy(p)[None],
                               gt_depth_map=torch.from_numpy(g)[None], img_path=str(i))
                          for i, (p, g) in enumerate(zip(preds, gts))])
    got = metric.compute_metrics(metric.results)
    p_all = np.concatenate([np.maximum(p, 0).ravel() for p in preds])
    g_all = np.concatenate([g.ravel() for g in gts])
    assert got['mae'] == pytest.approx(mean_absolute_error(g_all, p_all), rel=1e-9)
    assert got['rmse'] == pytest.approx(np.sqrt(mean_squared_error(g_all, p_all)), rel=1e-9)
    assert got['r2'] == pytest.approx(r2_score(g_all, p_all), rel=1e-9)
    assert got['bias'] == pytest.approx(float((p_all - g_all).mean()), rel=1e-9)
    blocks = [_official_block_means(np.maximum(p, 0), g, 8, 3) for p, g in zip(preds, gts)]
    bp = np.concatenate([b[0] for b in blocks])
    bg = np.concatenate([b[1] for b in blocks])
    assert bp.size == 4 * 5 + 3 * 7
    assert got['r2_block'] == pytest.approx(r2_score(bg, bp), rel=1e-9)


def test_metric_skips_invalid_pixels_and_blocks():
    gt = np.full((20, 20), 10.0)
    pred = np.full((20, 20), 12.0)
    gt[0:5, 0:5] = 0  # no data: not scored, and the block holding it is dropped
    pred[0:5, 0:5] = 1000.0
    metric = CanopyHeightMetric(block=10, border=0)
    metric.process(None, [dict(pred_depth_map=pred, gt_depth_map=gt, img_path='a')])
    r = metric.results[0]
    assert r['n'] == 375 and r['block_gt'].size == 3
    got = metric.compute_metrics(metric.results)
    assert got['mae'] == pytest.approx(2.0) and got['bias'] == pytest.approx(2.0)
    metric = CanopyHeightMetric()
    metric.process(None, [dict(pred_depth_map=pred, gt_depth_map=np.zeros_like(gt),
                               img_path='cloudy')])
    with pytest.raises(RuntimeError, match='no tile with a valid height'):
        metric.compute_metrics(metric.results)
