"""Cut aligned RGB / canopy-height GeoTIFF pairs into training tiles for the CHMv2 leaf.

    python tools/dataset_converters/make_canopy_tiles.py --pairs pairs.txt \\
        --out data/canopy_height [--tile 256] [--stride 256] [--test-fraction 0.1] \\
        [--min-valid 0.5] [--seed 0]

``pairs.txt`` holds one ``rgb.tif chm.tif`` line per scene (paths relative to the file):
an RGB image (3 bands, 8 bit, pixel- or band-interleaved) and its canopy-height map of the
same size, in the layout of Meta's released maps: band 1 = height above ground (metres,
any numeric type), ``GDAL_NODATA`` and the internal mask band (0 = masked, e.g. cloud)
marking pixels without truth. Layout written (what ``configs/_base_/datasets/canopy_height.py``
reads)::

    OUT/rgb/<scene>_<row>_<col>.tif   RGB tile (GeoTIFF, georeferencing shifted to the tile)
    OUT/chm/<scene>_<row>_<col>.tif   height tile: same type as the source, nodata where the
                                      source had no truth, plus the mask band
    OUT/train.txt, OUT/test.txt       "rgb/... chm/..." lines; whole scenes go to one split
                                      (--test-fraction of the scenes, at least one when there
                                      are two or more), so test tiles never border train tiles

Tiles whose share of valid pixels is below ``--min-valid`` are skipped. Each raster is read
whole (tifffile, no GDAL needed): cut a released zoom-10 map (tens of thousands of pixels a
side) into scenes first if memory is short.
"""
import argparse
import os
import os.path as osp
import sys

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# GeoTIFF tags copied to the tiles; the tie point is moved to each tile's corner.
PIXEL_SCALE, TIEPOINT, GEOKEYS, GDAL_NODATA = 33550, 33922, 34735, 42113


def default_nodata(dtype: np.dtype):
    """The nodata value written when the source has none (its mask band is kept as well)."""
    dtype = np.dtype(dtype)
    return float('nan') if dtype.kind == 'f' else np.iinfo(dtype).max


def _georef(page) -> dict:
    """The georeferencing tags of a page as plain values (read while the file is open)."""
    return {code: tuple(page.tags[code].value) for code in (PIXEL_SCALE, TIEPOINT, GEOKEYS)
            if code in page.tags}


def _geo_tags(geo: dict, row: int, col: int) -> list:
    """``extratags`` for tifffile: the source's georeferencing, tie point at (row, col)."""
    tags = []
    scale, tie, keys = geo.get(PIXEL_SCALE), geo.get(TIEPOINT), geo.get(GEOKEYS)
    if scale is not None:
        tags.append((PIXEL_SCALE, 'd', 3, scale, True))
    if tie is not None:
        t = list(tie)
        if scale is not None and len(t) == 6:  # north-up raster: one tie point, no rotation
            sx, sy = scale[0], scale[1]
            t = [0.0, 0.0, t[2], t[3] + (col - t[0]) * sx, t[4] - (row - t[1]) * sy, t[5]]
        tags.append((TIEPOINT, 'd', len(t), tuple(t), True))
    if keys is not None:
        tags.append((GEOKEYS, 'H', len(keys), keys, True))
    return tags


def write_rgb_tile(path: str, rgb: np.ndarray, extratags=()) -> None:
    """A 3-band 8-bit RGB GeoTIFF (pixel-interleaved, deflate, 16 px tiles when large)."""
    import tifffile
    tile = (16, 16) if min(rgb.shape[:2]) >= 16 else None
    tifffile.imwrite(path, np.ascontiguousarray(rgb), photometric='rgb', compression='zlib',
                     tile=tile, extratags=list(extratags))


def write_height_tile(path: str, heights: np.ndarray, nodata=None, mask=None,
                      extratags=()) -> None:
    """A single-band height GeoTIFF with ``GDAL_NODATA`` and, if given, GDAL's internal mask
    band (1 bit, NewSubfileType 4, 0 = masked)."""
    import tifffile
    tile = (16, 16) if min(heights.shape) >= 16 else None
    extra = list(extratags)
    if nodata is not None:
        extra.append((GDAL_NODATA, 's', 0, str(nodata), True))
    with tifffile.TiffWriter(path) as tif:
        tif.write(heights, photometric='minisblack', compression='zlib', tile=tile,
                  extratags=extra)
        if mask is not None:
            # tifffile writes no "mask" subfile type: write a reduced-image page and turn it
            # into GDAL's internal mask (NewSubfileType 4, PhotometricInterpretation 4).
            tif.write(np.asarray(mask, bool), photometric='minisblack', compression='zlib',
                      tile=tile, subfiletype=1)
    if mask is not None:
        with tifffile.TiffFile(path, mode='r+') as tif:
            tif.pages[1].tags['NewSubfileType'].overwrite(4)
            tif.pages[1].tags['PhotometricInterpretation'].overwrite(4)


def _read_rgb(path: str):
    import tifffile
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        rgb = page.asarray()
        if rgb.ndim == 3 and rgb.shape[0] in (3, 4) and rgb.shape[-1] not in (3, 4):
            rgb = rgb.transpose(1, 2, 0)  # band-interleaved (bands, H, W)
        if rgb.ndim != 3 or rgb.shape[-1] < 3 or rgb.dtype != np.uint8:
            raise ValueError(f'{path}: expected an 8-bit RGB image, got {rgb.dtype} '
                             f'{rgb.shape}.')
        return np.ascontiguousarray(rgb[..., :3]), _georef(page)


def read_pairs(pairs_file: str) -> list:
    base = osp.dirname(osp.abspath(pairs_file))
    pairs = []
    with open(pairs_file) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f'{pairs_file}, line {n}: expected "rgb.tif chm.tif", got '
                                 f'{line.strip()!r}.')
            pairs.append(tuple(osp.join(base, p) for p in fields))
    if not pairs:
        raise ValueError(f'{pairs_file} lists no scene.')
    return pairs


def make_canopy_tiles(pairs: list, out: str, tile: int = 256, stride: int = None,
                      test_fraction: float = 0.1, min_valid: float = 0.5,
                      seed: int = 0) -> dict:
    """Write the tiles and lists; returns the number of tiles per split."""
    import tifffile

    from dino_mm.datasets.depth import LoadCanopyHeightMap
    stride = stride or tile
    if tile < 16 or stride < 1 or not 0 <= test_fraction < 1 or not 0 <= min_valid <= 1:
        raise ValueError(f'need tile >= 16, stride >= 1, 0 <= test_fraction < 1 and '
                         f'0 <= min_valid <= 1; got tile={tile}, stride={stride}, '
                         f'test_fraction={test_fraction}, min_valid={min_valid}.')
    order = np.random.RandomState(seed).permutation(len(pairs))
    n_test = int(round(len(pairs) * test_fraction))
    if len(pairs) > 1 and test_fraction > 0:
        n_test = max(n_test, 1)
    test_scenes = set(order[:n_test].tolist())
    for sub in ('rgb', 'chm'):
        os.makedirs(osp.join(out, sub), exist_ok=True)
    lines = {'train': [], 'test': []}
    names = set()
    for i, (rgb_path, chm_path) in enumerate(pairs):
        rgb, rgb_geo = _read_rgb(rgb_path)
        heights, valid = LoadCanopyHeightMap._read_geotiff(chm_path, chm_path)
        if heights.shape != rgb.shape[:2]:
            raise ValueError(f'{chm_path} is {heights.shape} but {rgb_path} is '
                             f'{rgb.shape[:2]}: the pair must be aligned pixel for pixel.')
        with tifffile.TiffFile(chm_path) as tif:
            chm_geo = _georef(tif.pages[0])
            nodata = LoadCanopyHeightMap.gdal_nodata(tif.pages[0])
            if nodata is None:
                nodata = default_nodata(heights.dtype)
            if heights.dtype.kind != 'f' and not np.isnan(nodata):
                nodata = int(nodata)
            scene = osp.splitext(osp.basename(chm_path))[0]
            if scene in names:
                scene = f'{scene}_{i}'
            names.add(scene)
            split = 'test' if i in test_scenes else 'train'
            h, w = heights.shape
            for r in range(0, h - tile + 1, stride):
                for c in range(0, w - tile + 1, stride):
                    ok = valid[r:r + tile, c:c + tile]
                    if ok.mean() < min_valid:
                        continue
                    name = f'{scene}_{r}_{c}.tif'
                    write_rgb_tile(osp.join(out, 'rgb', name), rgb[r:r + tile, c:c + tile],
                                   _geo_tags(rgb_geo, r, c))
                    cut = heights[r:r + tile, c:c + tile].copy()
                    cut[~ok] = nodata
                    write_height_tile(osp.join(out, 'chm', name), cut, nodata=nodata, mask=ok,
                                      extratags=_geo_tags(chm_geo, r, c))
                    lines[split].append(f'rgb/{name} chm/{name}\n')
    for split, rows in lines.items():
        with open(osp.join(out, f'{split}.txt'), 'w') as f:
            f.writelines(rows)
    counts = {k: len(v) for k, v in lines.items()}
    if not counts['train']:
        raise ValueError(f'No training tile written to {out}: every tile of the training '
                         f'scenes has less than {min_valid:.0%} valid pixels, or the scenes '
                         f'are smaller than --tile {tile}.')
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', required=True, help='"rgb.tif chm.tif" lines')
    parser.add_argument('--out', required=True)
    parser.add_argument('--tile', type=int, default=256)
    parser.add_argument('--stride', type=int, default=None, help='default: --tile')
    parser.add_argument('--test-fraction', type=float, default=0.1)
    parser.add_argument('--min-valid', type=float, default=0.5)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    counts = make_canopy_tiles(read_pairs(args.pairs), args.out, args.tile, args.stride,
                               args.test_fraction, args.min_valid, args.seed)
    print(f'wrote {counts["train"]} train / {counts["test"]} test tiles to {args.out}')
    return counts


if __name__ == '__main__':
    main()
