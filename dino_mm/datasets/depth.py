"""NYU Depth v2 and KITTI (Eigen split) depth datasets and depth transforms.

Both read BTS-style split lists (``nyu_train.txt``/``nyu_test.txt``,
``eigen_train_files_with_gt.txt``/``eigen_test_files_with_gt.txt``): one sample per line,
``rgb_path depth_path focal``, paths relative to the image / depth roots (a leading ``/``
as in the BTS NYU lists is accepted). Depth maps are 16-bit PNGs: NYU stores millimetres
(scale 1000), KITTI stores depth*256 (scale 256); 0 means "no measurement".
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

__all__ = ['NYUDepthDataset', 'KITTIDepthDataset', 'LoadDepthMap', 'KBCrop', 'RandomBrightness']


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
                if len(fields) > 2:
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

    def transform(self, results: dict) -> dict:
        path = results.get('depth_map_path')
        if path is None:
            return results
        with get_local_path(path) as local:
            raw = cv2.imread(local, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise FileNotFoundError(f'Cannot read depth map {path} (missing or not an image).')
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise ValueError(
                f'Depth map {path} is {raw.dtype} with shape {raw.shape}; expected a '
                'single-channel 16-bit PNG (NYU: millimetres, KITTI: depth*256). An 8-bit or '
                'colour PNG is a visualisation, not ground truth.')
        # ori_shape is the image size as loaded, so the check also holds when the depth map
        # is loaded after a Resize (the usual order in test pipelines).
        img_shape = results.get('ori_shape', results['img'].shape[:2] if 'img' in results else None)
        if self.check_size and img_shape is not None and raw.shape != tuple(img_shape[:2]):
            raise ValueError(
                f'Depth map {path} has size {raw.shape} but its image '
                f'{results.get("img_path")} has size {tuple(img_shape[:2])}; the list file '
                'pairs the wrong files or one of them was resized.')
        scale = float(self.depth_scale or results.get('depth_scale', 1.0))
        max_depth = self.max_depth or results.get('max_depth')
        depth = raw.astype(np.float32) / scale
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
