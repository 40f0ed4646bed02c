"""Checks for semantic segmentation data (ADE20K / Pascal VOC through mmseg).

mmseg's ``ADE20KDataset`` and ``PascalVOCDataset`` read the official layouts correctly,
but a corrupt annotation (wrong size, labels outside the class range) only surfaces as
an opaque shape error or, worse, as a silently wrong loss / mIoU. ``CheckSegAnnotation``
turns both into errors that name the files. It has no mmcv / mmseg import so that
``import dino_mm`` keeps working without the OpenMMLab dense-task stack.
"""
from typing import Optional

import numpy as np

from dino_mm.registry import TRANSFORMS


@TRANSFORMS.register_module()
class CheckSegAnnotation:
    """Validate ``gt_seg_map`` against its image and the class range.

    Place it right after ``LoadAnnotations`` (and after the image was loaded). The
    annotation must have the *original* image size (``ori_shape``, which resizes
    between loading the image and the annotation do not change), and every label
    must be in ``[0, num_classes)`` or equal ``ignore_index`` (labels are checked
    after ``reduce_zero_label``, so ADE20K's 0 is already the ignore value).

    Inference has no annotation: ``mmseg.apis.inference_model`` and ``MMSegInferencer``
    remove ``LoadAnnotations`` from the test pipeline and feed images only (no
    ``seg_map_path``), so a sample without ``seg_map_path`` and without ``gt_seg_map``
    passes unchanged. A sample of a dataset (it has ``seg_map_path``) whose annotation
    was not loaded is an error: evaluation would otherwise have no ground truth.

    Args:
        num_classes (int): Number of classes of the dataset (150 for ADE20K, 21 for
            VOC2012).
        ignore_index (int): The ignore label. Defaults to 255.
        check_size (bool): Check the annotation size. Defaults to True.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 check_size: bool = True) -> None:
        if num_classes <= 0:
            raise ValueError(f'CheckSegAnnotation needs num_classes > 0, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.check_size = check_size

    def transform(self, results: dict) -> dict:
        """Raise ``ValueError`` naming the files when the annotation is invalid.

        Args:
            results (dict): Pipeline results with ``gt_seg_map`` and ``ori_shape``, or
                an inference sample (neither ``gt_seg_map`` nor ``seg_map_path``).

        Returns:
            dict: ``results`` unchanged.
        """
        seg: Optional[np.ndarray] = results.get('gt_seg_map')
        img_path = results.get('img_path', '<unknown image>')
        if seg is None:
            if results.get('seg_map_path') is None:
                return results  # inference: no annotation to check
            raise KeyError(
                f'CheckSegAnnotation found no gt_seg_map for {img_path} (annotation '
                f"{results['seg_map_path']}); put it after LoadAnnotations in the pipeline.")
        seg_path = results.get('seg_map_path') or '<unknown annotation>'
        if self.check_size:
            img_hw = tuple(results.get('ori_shape', results.get('img_shape'))[:2])
            if tuple(seg.shape[:2]) != img_hw:
                raise ValueError(
                    f'Annotation {seg_path} has size (H, W)={tuple(seg.shape[:2])} but '
                    f'its image {img_path} has size {img_hw}; annotations must be '
                    'pixel-aligned with their images (regenerate or remove this pair).')
        labels = np.unique(seg)
        bad = labels[(labels != self.ignore_index)
                     & ((labels < 0) | (labels >= self.num_classes))]
        if bad.size:
            raise ValueError(
                f'Annotation {seg_path} (image {img_path}) contains labels '
                f'{bad.tolist()} outside [0, {self.num_classes}) that are not the ignore '
                f'index {self.ignore_index} (values after reduce_zero_label, if set). '
                'Check the dataset type / num_classes, or that the PNG stores class '
                'indices (palette or grayscale), not RGB colours.')
        return results

    __call__ = transform

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index}, check_size={self.check_size})')
