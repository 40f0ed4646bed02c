"""Canopy-height tiles in the official layout (GeoTIFF heights in metres with nodata and a
mask band) and the canopy-height metrics of Meta's evaluation.

* ``dino_mm.LoadCanopyHeightMap`` returns the heights in metres, 0 where the file says
  nodata / masked, bare ground as 1 mm; PNG in centimetres still works;
* bad files are named with what to do (an RGB raster as height map, a mask of another
  size, centimetres read as metres, a tile of another size);
* ``dino_mm.CanopyHeightMetric`` equals scikit-learn's R² / MAE / MSE and torch's average
  pooling (the official block R²) on the same pixels.
"""
import os.path as osp

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


# ---------------------------------------------------------------- the tiling converter
def test_written_files_are_a_geotiff_with_gdal_mask(tmp_path):
    import tifffile
    write_chm(tmp_path / 'chm.tif', np.zeros((20, 20), np.uint8), mask=np.ones((20, 20)))
    with tifffile.TiffFile(str(tmp_path / 'chm.tif')) as tif:
        assert tif.pages[0].is_geotiff and not tif.pages[0].is_mask
        assert tif.pages[1].is_mask and tif.pages[1].bitspersample == 1
        assert tif.pages[0].tags['GDAL_NODATA'].value.strip('\x00') == '255'


def test_converter_cuts_aligned_tiles_splits_scenes_and_skips_cloudy_tiles(tmp_path,
                                                                            real_images):
    import tifffile

    from tests.depth.canopy_tiles import GEO_TAGS, _converter
    conv = _converter()
    scenes = []
    for name, key in (('north', 'astronaut'), ('south', 'coffee')):
        rgb = np.ascontiguousarray(real_images[key][:70, :100])
        stored, mask, expected = synthetic_heights(rgb, seed=len(scenes))
        mask[:32, 64:96] = False  # one tile fully under cloud
        expected[:32, 64:96] = np.nan
        write_rgb(tmp_path / f'{name}_rgb.tif', rgb)
        write_chm(tmp_path / f'{name}.tif', stored, mask=mask)
        scenes.append((name, rgb, expected))
    (tmp_path / 'pairs.txt').write_text('north_rgb.tif north.tif\nsouth_rgb.tif south.tif\n')
    out = tmp_path / 'tiles'
    counts = conv.main(['--pairs', str(tmp_path / 'pairs.txt'), '--out', str(out),
                        '--tile', '32', '--test-fraction', '0.5'])
    # 2 x 3 tiles of 32 px per 70 x 100 scene, the cloudy one skipped: 5 per scene
    assert counts == {'train': 5, 'test': 5}
    tests = (out / 'test.txt').read_text().split()
    test_scene = tests[0].split('/')[1].rsplit('_', 2)[0]
    assert all(t.split('/')[1].startswith(test_scene) for t in tests)  # one scene per split
    ds = CanopyHeightDataset(ann_file='train.txt', data_root=str(out),
                             pipeline=[dict(type='mmcv.LoadImageFromFile'),
                                       dict(type='dino_mm.LoadCanopyHeightMap')])
    by_name = {name: (rgb, exp) for name, rgb, exp in scenes}
    for i in range(len(ds)):
        sample = ds[i]
        scene, r, c = osp.basename(sample['img_path'])[:-4].rsplit('_', 2)
        r, c = int(r), int(c)
        rgb, exp = by_name[scene]
        np.testing.assert_array_equal(sample['img'][..., ::-1], rgb[r:r + 32, c:c + 32])
        window = exp[r:r + 32, c:c + 32]
        gt = sample['gt_depth_map']
        assert np.array_equal(gt == 0, np.isnan(window))
        ok = ~np.isnan(window)
        np.testing.assert_array_equal(gt[ok], np.maximum(window[ok], 1e-3))
        with tifffile.TiffFile(sample['depth_map_path']) as tif:
            tie = tif.pages[0].tags[33922].value
        assert tie[3] == pytest.approx(GEO_TAGS[1][3][3] + c * 0.6)  # moved to the tile
        assert tie[4] == pytest.approx(GEO_TAGS[1][3][4] - r * 0.6)


def test_converter_errors_name_the_files(tmp_path, real_images):
    from tests.depth.canopy_tiles import _converter
    conv = _converter()
    write_rgb(tmp_path / 'a_rgb.tif', real_images['coffee'][:40, :40])
    write_chm(tmp_path / 'a.tif', np.zeros((40, 48), np.uint8))
    (tmp_path / 'pairs.txt').write_text('a_rgb.tif a.tif\n')
    with pytest.raises(ValueError, match=r'a\.tif is \(40, 48\) but .*a_rgb\.tif is'):
        conv.main(['--pairs', str(tmp_path / 'pairs.txt'), '--out', str(tmp_path / 'o'),
                   '--tile', '16'])
    write_chm(tmp_path / 'a.tif', np.zeros((40, 40), np.uint8), mask=np.zeros((40, 40)))
    with pytest.raises(ValueError, match='No training tile written'):
        conv.main(['--pairs', str(tmp_path / 'pairs.txt'), '--out', str(tmp_path / 'o'),
                   '--tile', '16'])
    (tmp_path / 'bad.txt').write_text('only_one.tif\n')
    with pytest.raises(ValueError, match=r'bad\.txt, line 1'):
        conv.read_pairs(str(tmp_path / 'bad.txt'))
