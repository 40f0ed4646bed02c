"""Tiny canopy-height tile sets in the layout of Meta's released canopy-height maps.

The RGB tile is a 3-band 8-bit GeoTIFF, the height map a single-band GeoTIFF in metres
(here uint8, as the released CHMv2 maps) with ``GDAL_NODATA`` = 255 and a GDAL internal
mask band (1 bit, NewSubfileType = 4 "mask", 0 = masked: the cloud flag). Both carry the
GeoTIFF georeferencing tags of a 0.6 m EPSG:3857 grid, written by the tile writers of
tools/dataset_converters/make_canopy_tiles.py (tifffile); the tests read them back with
tifffile's own page flags (``is_mask``, ``is_geotiff``).
"""
import importlib.util
import os.path as osp

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# ModelPixelScale, ModelTiepoint, GeoKeyDirectory (projected, EPSG:3857)
GEO_TAGS = [
    (33550, 'd', 3, (0.6, 0.6, 0.0), True),
    (33922, 'd', 6, (0.0, 0.0, 0.0, -13580000.0, 6090000.0, 0.0), True),
    (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 3857), True),
]
NODATA = 255


def _converter():
    spec = importlib.util.spec_from_file_location(
        '_dino_mm_make_canopy_tiles',
        osp.join(ROOT, 'tools', 'dataset_converters', 'make_canopy_tiles.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_rgb(path, rgb):
    _converter().write_rgb_tile(str(path), rgb, GEO_TAGS)


def write_chm(path, heights, nodata=NODATA, mask=None):
    """``heights`` as stored (e.g. uint8 metres); ``mask``: bool, False = masked (cloud)."""
    _converter().write_height_tile(str(path), heights, nodata=nodata, mask=mask,
                                   extratags=GEO_TAGS)


def synthetic_heights(rgb, seed):
    """uint8 heights in metres that follow the picture (so a head can learn something),
    with bare ground (0 m), a few nodata pixels and a cloud patch. Returns (stored heights,
    mask band, expected metres with NaN where there is no ground truth)."""
    rng = np.random.default_rng(seed)
    g = rgb[..., 1].astype(np.float32) / 255.0
    metres = np.round(40.0 * g).astype(np.uint8)
    metres[g < 0.25] = 0  # bare ground
    stored = metres.copy()
    h, w = stored.shape
    nodata = rng.random((h, w)) < 0.02
    stored[nodata] = NODATA
    mask = np.ones((h, w), bool)
    mask[h // 4:h // 2, w // 4:w // 2] = False  # cloud
    expected = metres.astype(np.float32)
    expected[nodata | ~mask] = np.nan
    return stored, mask, expected


def write_tile_set(root, images, size=(64, 64), lists=('train.txt', 'test.txt')):
    """One tile per image (top-left ``size`` crop) under ``root``/{rgb,chm}; the same tiles
    listed in every list file. Returns [(rgb, expected metres)]."""
    (root / 'rgb').mkdir(parents=True, exist_ok=True)
    (root / 'chm').mkdir(exist_ok=True)
    tiles, lines = [], []
    for i, image in enumerate(images):
        rgb = np.ascontiguousarray(image[:size[0], :size[1]])
        stored, mask, expected = synthetic_heights(rgb, seed=i)
        write_rgb(root / 'rgb' / f'tile_{i}.tif', rgb)
        write_chm(root / 'chm' / f'tile_{i}.tif', stored, mask=mask)
        lines.append(f'rgb/tile_{i}.tif chm/tile_{i}.tif\n')
        tiles.append((rgb, expected))
    for name in lists:
        (root / name).write_text(''.join(lines))
    return tiles
