"""NYU Depth v2, KITTI (Eigen split) and canopy-height (CHMv2) datasets and their transforms.

All read BTS-style split lists (``nyu_train.txt``/``nyu_test.txt``,
``eigen_train_files_with_gt.txt``/``eigen_test_files_with_gt.txt``): one sample per line,
``rgb_path depth_path focal``, paths relative to the image / depth roots (a leading ``/``
as in the BTS NYU lists is accepted). Depth maps are 16-bit PNGs: NYU stores millimetres
(scale 1000), KITTI stores depth*256 (scale 256); 0 means "no measurement". Canopy-height
maps are single-band GeoTIFFs in metres, the layout of Meta's released canopy-height maps
(see :class:`LoadCanopyHeightMap`).
"""
import os.path as osp
from typing import List, Optional, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset
from mmengine.fileio import get_local_path

from dino_mm.datasets.base import NonEmptyMixin
from dino_mm.registry import DATASETS, TRANSFORMS

__all__ = ['NYUDepthDataset', 'KITTIDepthDataset', 'CanopyHeightDataset', 'LoadDepthMap',
           'LoadCanopyHeightMap', 'KBCrop', 'RandomBrightness']


class _DepthListDataset(NonEmptyMixin, BaseDataset):
    """Depth dataset read from a BTS-style list file.

    Args:
        ann_file (str): Split list, relative to ``data_root`` unless absolute.
        data_root (str): Dataset root. Defaults to ''.
        data_prefix (dict): ``img_path`` and ``depth_map_path`` roots (relative to
            ``data_root``) prepended to the list entries.
        depth_scale (float, optional): PNG value per metre; default per dataset.
        min_depth (float, optional): Smallest valid depth (m); default per dataset.
        max_depth (float, optional): Largest valid depth (m); default per dataset.
        skip_missing_depth (bool): Drop lines whose depth path is ``None`` (KITTI frames
            without ground truth). If False such samples are kept without depth
            (inference only). Defaults to True.
        **kwargs: Other ``mmengine.dataset.BaseDataset`` arguments (pipeline, test_mode,
            indices, ...).
    """

    DEFAULTS = dict(depth_scale=1.0, min_depth=1e-3, max_depth=10.0)
    # BTS lists carry the focal length as their third field; other lists may not.
    THIRD_FIELD_IS_FOCAL = True

    def _root_hint(self) -> str:
        return 'the split list (ann_file) and the RGB images / depth maps it names'

    def _empty_hint(self) -> str:
        return (f'Check the split list "{self.ann_file}" (one "rgb_path depth_path [focal]" '
                'line per sample) and data_root.')

    def __init__(self,
                 ann_file: str,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path='', depth_map_path=''),
                 depth_scale: Optional[float] = None,
                 min_depth: Optional[float] = None,
                 max_depth: Optional[float] = None,
                 skip_missing_depth: bool = True,
                 metainfo: Optional[dict] = None,
                 **kwargs) -> None:
        self.depth_scale = float(depth_scale or self.DEFAULTS['depth_scale'])
        self.min_depth = float(self.DEFAULTS['min_depth'] if min_depth is None else min_depth)
        self.max_depth = float(max_depth or self.DEFAULTS['max_depth'])
        self.skip_missing_depth = skip_missing_depth
        meta = dict(depth_scale=self.depth_scale, min_depth=self.min_depth,
                    max_depth=self.max_depth)
        meta.update(metainfo or {})
        super().__init__(ann_file=ann_file, data_root=data_root,
                         data_prefix=dict(data_prefix), metainfo=meta, **kwargs)

    @staticmethod
    def _join(root: str, rel: str) -> str:
        return osp.join(root, rel.lstrip('/')) if root else rel

    def load_data_list(self) -> List[dict]:
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'{type(self).__name__}: split list {self.ann_file} not '
                                    'found (set data_root / ann_file in the dataset config).')
        img_root = self.data_prefix.get('img_path', '')
        depth_root = self.data_prefix.get('depth_map_path', '')
        data_list = []
        with open(self.ann_file) as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2:
                    raise ValueError(f'{self.ann_file}, line {line_no}: expected '
                                     f'"rgb_path depth_path [focal]", got {line.strip()!r}.')
                has_depth = fields[1] != 'None'
                if not has_depth and self.skip_missing_depth:
                    continue
                info = dict(
                    img_path=self._join(img_root, fields[0]),
                    depth_map_path=self._join(depth_root, fields[1]) if has_depth else None,
                    depth_scale=self.depth_scale,
                    min_depth=self.min_depth,
                    max_depth=self.max_depth,
                    seg_fields=[])
                if len(fields) > 2 and self.THIRD_FIELD_IS_FOCAL:
                    try:
                        info['focal'] = float(fields[2])
                    except ValueError:
                        raise ValueError(f'{self.ann_file}, line {line_no}: focal '
                                         f'{fields[2]!r} is not a number.') from None
                data_list.append(info)
        if not data_list:
            raise ValueError(f'{self.ann_file} lists no usable sample.')
        return data_list


@DATASETS.register_module()
class NYUDepthDataset(_DepthListDataset):
    """NYU Depth v2 (BTS subset). Depth PNGs in millimetres (scale 1000), valid range
    (0.001, 10) m; evaluate with the Eigen crop (``dino_mm.DepthMetric(crop='nyu_eigen')``)."""

    DEFAULTS = dict(depth_scale=1000.0, min_depth=1e-3, max_depth=10.0)


@DATASETS.register_module()
class KITTIDepthDataset(_DepthListDataset):
    """KITTI Eigen split. Depth PNGs store depth*256 (scale 256), valid range (0.001, 80) m;
    evaluate with the Garg crop (``dino_mm.DepthMetric(crop='kitti_garg')``). Set
    ``data_prefix=dict(img_path=<raw data root>, depth_map_path=<ground-truth root>)``."""

    DEFAULTS = dict(depth_scale=256.0, min_depth=1e-3, max_depth=80.0)


@DATASETS.register_module()
class CanopyHeightDataset(_DepthListDataset):
    """Canopy-height tiles (CHMv2, official ``dinov3_vitl16_chmv2``): a list file with one
    ``rgb_path chm_path`` line per tile (a third field is ignored), paths relative to
    ``data_root``. The RGB tile is a 3-band 8-bit image (GeoTIFF, PNG or JPEG); the canopy
    height map is read by :class:`LoadCanopyHeightMap`: a single-band GeoTIFF in metres
    (``depth_scale=1``, the default) with its nodata value and mask band, or a 16-bit PNG
    (set ``depth_scale`` to the PNG value per metre, e.g. 100 for centimetres). Heights up to
    96 m, the CHMv2 maximum."""

    DEFAULTS = dict(depth_scale=1.0, min_depth=1e-3, max_depth=96.0)
    THIRD_FIELD_IS_FOCAL = False

    def _empty_hint(self) -> str:
        return (f'Check the tile list "{self.ann_file}" (one "rgb_path chm_path" line per '
                'tile) and data_root.')


@TRANSFORMS.register_module()
class LoadDepthMap(BaseTransform):
    """Load a 16-bit depth PNG, convert it to metres and check it.

    Must follow the image loading (the size is checked against ``results['img']``).
    Adds ``gt_depth_map`` (float32, H x W, metres, 0 = invalid) to ``results`` and to
    ``seg_fields`` so mmseg's geometric transforms move it with the image.

    Raises a ``ValueError`` naming the file when the PNG is not single-channel 16-bit
    (e.g. an 8-bit PNG), when its size differs from the image, or when every measured
    value lies beyond ``max_depth`` after scaling (wrong ``depth_scale``).

    Args:
        depth_scale (float, optional): PNG value per metre; default: the sample's
            ``depth_scale`` (set by the dataset).
        max_depth (float, optional): Plausibility limit; default: the sample's.
        check_size (bool): Compare with the image size. Defaults to True.
    """

    def __init__(self, depth_scale: Optional[float] = None, max_depth: Optional[float] = None,
                 check_size: bool = True) -> None:
        self.depth_scale = depth_scale
        self.max_depth = max_depth
        self.check_size = check_size

    def _read(self, path: str, scale: float) -> np.ndarray:
        """The map in metres (float32, 0 = invalid)."""
        with get_local_path(path) as local:
            raw = cv2.imread(local, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise FileNotFoundError(f'Cannot read depth map {path} (missing or not an image).')
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise ValueError(
                f'Depth map {path} is {raw.dtype} with shape {raw.shape}; expected a '
                'single-channel 16-bit PNG (NYU: millimetres, KITTI: depth*256). An 8-bit or '
                'colour PNG is a visualisation, not ground truth.')
        return raw.astype(np.float32) / scale

    def transform(self, results: dict) -> dict:
        path = results.get('depth_map_path')
        if path is None:
            return results
        scale = float(self.depth_scale or results.get('depth_scale', 1.0))
        depth = self._read(path, scale)
        # ori_shape is the image size as loaded, so the check also holds when the depth map
        # is loaded after a Resize (the usual order in test pipelines).
        img_shape = results.get('ori_shape', results['img'].shape[:2] if 'img' in results else None)
        if self.check_size and img_shape is not None and depth.shape != tuple(img_shape[:2]):
            raise ValueError(
                f'Depth map {path} has size {depth.shape} but its image '
                f'{results.get("img_path")} has size {tuple(img_shape[:2])}; the list file '
                'pairs the wrong files or one of them was resized.')
        max_depth = self.max_depth or results.get('max_depth')
        measured = depth[depth > 0]
        if max_depth is not None and measured.size and measured.min() > max_depth:
            raise ValueError(
                f'Depth map {path}: every measured value is beyond max_depth={max_depth} m '
                f'after dividing by depth_scale={scale} (smallest {measured.min():.3f} m); the '
                'file uses another unit or the dataset a wrong depth_scale.')
        results['gt_depth_map'] = depth
        results.setdefault('seg_fields', [])
        if 'gt_depth_map' not in results['seg_fields']:
            results['seg_fields'].append('gt_depth_map')
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(depth_scale={self.depth_scale}, '
                f'max_depth={self.max_depth}, check_size={self.check_size})')


@TRANSFORMS.register_module()
class LoadCanopyHeightMap(LoadDepthMap):
    """Load a canopy-height map (CHMv2 tiles) in metres and check it.

    Reads the layout of Meta's released canopy-height maps (CHMv2, and the NEON test tiles of
    the first version): a GeoTIFF whose first full-resolution band is the height above ground
    in metres (any integer or float type), with its ``GDAL_NODATA`` value and its internal
    mask band (GDAL's per-dataset mask, 0 = masked, e.g. imagery flagged as cloud) marking
    pixels without ground truth. tifffile reads it (GeoTIFF tags are not needed: the map is
    aligned pixel for pixel with its RGB tile). A 16-bit PNG is read like
    :class:`LoadDepthMap` (0 = no data, ``depth_scale`` PNG values per metre).

    Adds ``gt_depth_map`` (float32, metres, 0 = invalid). The depth losses and the padding of
    the data preprocessor treat 0 as "no data", so measured heights below ``ground_height``
    (bare ground is 0 m; negative lidar heights are clamped to 0, as the official NEON
    evaluation does) are stored as ``ground_height``: the smallest height the CHMv2 head
    predicts (its first bin), so ground stays a scored pixel at an error below 1 mm.

    Raises a ``ValueError`` naming the file when the map has several bands, when its mask
    band has another size, when its size differs from the image, or when every measured
    height lies beyond ``max_depth`` (wrong unit or ``depth_scale``).

    Args:
        depth_scale (float, optional): File value per metre (1 for GeoTIFF heights in metres,
            100 for a PNG in centimetres); default: the sample's ``depth_scale``.
        ground_height (float): Value stored for measured heights below it. Defaults to 1e-3.
        max_depth (float, optional): Plausibility limit; default: the sample's.
        check_size (bool): Compare with the image size. Defaults to True.
    """

    TIFF_SUFFIXES = ('.tif', '.tiff')

    def __init__(self, depth_scale: Optional[float] = None, ground_height: float = 1e-3,
                 max_depth: Optional[float] = None, check_size: bool = True) -> None:
        super().__init__(depth_scale=depth_scale, max_depth=max_depth, check_size=check_size)
        if not ground_height > 0:
            raise ValueError(f'LoadCanopyHeightMap: ground_height must be > 0 (0 means "no '
                             f'data"), got {ground_height}.')
        self.ground_height = float(ground_height)

    @staticmethod
    def gdal_nodata(page) -> Optional[float]:
        """The ``GDAL_NODATA`` value of a tifffile page (an ASCII tag), None without one."""
        tag = page.tags.get('GDAL_NODATA')
        return None if tag is None else float(str(tag.value).strip('\x00 '))

    @staticmethod
    def _read_geotiff(path: str, local: str) -> Tuple[np.ndarray, np.ndarray]:
        """(heights as stored, valid mask) of the first full-resolution band."""
        # tifffile ships with scikit-image and imageio; imported here so that the other
        # depth datasets do not need it.
        import tifffile
        with tifffile.TiffFile(local) as tif:
            pages = [p for p in tif.pages if not p.is_reduced]
            data = [p for p in pages if not p.is_mask]
            masks = [p for p in pages if p.is_mask]
            if not data:
                raise ValueError(f'Canopy-height GeoTIFF {path} holds no image band.')
            page = data[0]
            raw = page.asarray()
            if raw.ndim != 2:
                raise ValueError(
                    f'Canopy-height GeoTIFF {path} has shape {raw.shape}; expected one height '
                    'band (metres) with the cloud flag as its mask band, not an RGB or '
                    'multi-band raster.')
            valid = np.isfinite(raw) if raw.dtype.kind == 'f' else np.ones(raw.shape, bool)
            nodata = LoadCanopyHeightMap.gdal_nodata(page)
            if nodata is not None:
                valid &= ~np.isnan(raw) if np.isnan(nodata) else raw != nodata
            if masks:
                mask = masks[0].asarray()
                if mask.shape != raw.shape:
                    raise ValueError(f'Canopy-height GeoTIFF {path}: mask band {mask.shape} '
                                     f'and height band {raw.shape} differ in size.')
                valid &= mask > 0
        return raw, valid

    def _read(self, path: str, scale: float) -> np.ndarray:
        if path.lower().endswith(self.TIFF_SUFFIXES):
            with get_local_path(path) as local:
                if not osp.isfile(local):
                    raise FileNotFoundError(f'Cannot read canopy-height map {path} (missing).')
                raw, valid = self._read_geotiff(path, local)
            height = np.where(valid, raw, 0).astype(np.float32) / scale
        else:  # 16-bit PNG: 0 = no data
            height = super()._read(path, scale)
            valid = height > 0
        return np.where(valid, np.maximum(height, self.ground_height), 0).astype(np.float32)

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        height = results.get('gt_depth_map')
        max_depth = self.max_depth or results.get('max_depth')
        if height is not None and max_depth is not None:
            # Ground keeps the minimum of a map near ground_height, so the parent's "all
            # beyond max_depth" test cannot see a wrong unit; trees above 1.25 x the limit
            # (120 m for CHMv2) on more than 1 % of the measured pixels can.
            measured = height[height > 0]
            too_tall = (measured > 1.25 * max_depth).mean() if measured.size else 0.0
            if too_tall > 0.01:
                scale = float(self.depth_scale or results.get('depth_scale', 1.0))
                raise ValueError(
                    f'Canopy-height map {results.get("depth_map_path")}: '
                    f'{too_tall:.0%} of the measured heights exceed '
                    f'{1.25 * max_depth:g} m after dividing by depth_scale={scale} (largest '
                    f'{measured.max():.1f} m); the file uses another unit (e.g. centimetres: '
                    'set depth_scale=100) or is not a height map.')
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(depth_scale={self.depth_scale}, '
                f'ground_height={self.ground_height}, max_depth={self.max_depth}, '
                f'check_size={self.check_size})')


@TRANSFORMS.register_module()
class KBCrop(BaseTransform):
    """KITTI benchmark crop: the bottom ``height`` rows and the centred ``width`` columns
    (352 x 1216 by default), applied to the image and every ``seg_fields`` map.

    Args:
        height (int): Crop height. Defaults to 352.
        width (int): Crop width. Defaults to 1216.
    """

    def __init__(self, height: int = 352, width: int = 1216) -> None:
        self.height = height
        self.width = width

    def _box(self, shape: Tuple[int, int]) -> Tuple[int, int]:
        h, w = shape
        if h < self.height or w < self.width:
            raise ValueError(f'KBCrop({self.height}x{self.width}) needs an image at least that '
                             f'large, got {h}x{w}.')
        return h - self.height, (w - self.width) // 2

    def transform(self, results: dict) -> dict:
        top, left = self._box(results['img'].shape[:2])
        sl = (slice(top, top + self.height), slice(left, left + self.width))
        results['img'] = results['img'][sl]
        for key in results.get('seg_fields', []):
            results[key] = results[key][sl]
        results['img_shape'] = results['img'].shape[:2]
        results['kb_crop'] = (top, left)
        return results


@TRANSFORMS.register_module()
class RandomBrightness(BaseTransform):
    """Multiply the image by a factor drawn uniformly from ``factor_range`` (DINOv3 NYU depth
    training uses [0.75, 1.25]); depth is untouched. mmseg's ``PhotoMetricDistortion`` cannot
    switch off its hue / saturation steps, hence this transform.

    Args:
        factor_range (tuple[float, float]): Range of the brightness factor.
            Defaults to (0.75, 1.25).
        prob (float): Probability of applying it. Defaults to 1.0.
    """

    def __init__(self, factor_range: Tuple[float, float] = (0.75, 1.25),
                 prob: float = 1.0) -> None:
        self.factor_range = factor_range
        self.prob = prob

    def transform(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            factor = np.random.uniform(*self.factor_range)
            img = results['img'].astype(np.float32) * factor
            results['img'] = np.clip(img, 0, 255).astype(results['img'].dtype)
        return results
