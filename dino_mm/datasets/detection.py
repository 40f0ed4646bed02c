"""COCO detection data with explicit handling of bad annotations.

mmdet's ``CocoDataset`` silently drops degenerate boxes and only fails on a missing image
when a worker tries to read it, deep inside a training run. ``CheckedCocoDataset``
checks every image path and box when the annotation file is parsed and either raises an
error naming the file and annotation, or (``on_invalid='skip'``) drops them and logs how
many were dropped.
"""
import os.path as osp
from typing import List

from mmdet.datasets import CocoDataset
from mmengine.logging import print_log

from dino_mm.datasets.base import NonEmptyMixin
from dino_mm.registry import DATASETS
from dino_mm.utils.scope import builds_in_scope

__all__ = ['CheckedCocoDataset']


@DATASETS.register_module()
@builds_in_scope('mmdet')
class CheckedCocoDataset(NonEmptyMixin, CocoDataset):
    """mmdet ``CocoDataset`` that validates images and boxes up front.

    Args:
        on_invalid (str): ``'error'`` (default) raises a ``ValueError`` naming the
            annotation file, the image and the offending annotation; ``'skip'`` drops
            images whose file is missing and boxes that are degenerate (width or height
            <= 0, or outside the image), and logs the counts.
        check_files (bool): Whether to check that every image file exists.
            Defaults to True.
        **kwargs: Passed to :class:`mmdet.datasets.CocoDataset`.
    """

    def __init__(self, *args, on_invalid: str = 'error', check_files: bool = True,
                 **kwargs) -> None:
        if on_invalid not in ('error', 'skip'):
            raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
        self.on_invalid = on_invalid
        self.check_files = check_files
        self.num_skipped_images = 0
        self.num_skipped_boxes = 0
        super().__init__(*args, **kwargs)

    def _root_hint(self) -> str:
        return 'the COCO-style annotation file (ann_file) and the images (data_prefix.img)'

    def _empty_hint(self) -> str:
        return (f'The annotation file "{self.ann_file}" lists no usable image (images '
                f'without annotations are dropped by filter_cfg, and with '
                f"on_invalid='skip' those whose file is missing). Check ann_file, "
                'data_prefix.img and the images.')

    def _problem(self, message: str) -> None:
        if self.on_invalid == 'error':
            raise ValueError(
                f'{self.ann_file}: {message}. Fix the annotation, or set '
                f"on_invalid='skip' in the dataset config to drop such entries.")

    def parse_data_info(self, raw_data_info: dict):
        img_info = raw_data_info['raw_img_info']
        img_path = osp.join(self.data_prefix.get('img', ''), img_info['file_name'])
        if self.check_files and not osp.isfile(img_path):
            self._problem(f'image file "{img_path}" (image id {img_info["img_id"]}) '
                          f'does not exist')
            return {'_invalid_image': img_path}
        width, height = img_info['width'], img_info['height']
        kept = []
        for ann in raw_data_info['raw_ann_info']:
            if ann.get('ignore', False):
                kept.append(ann)
                continue
            x1, y1, w, h = ann['bbox']
            inside = (x1 < width and y1 < height and x1 + w > 0 and y1 + h > 0)
            if w <= 0 or h <= 0 or not inside:
                self._problem(
                    f'degenerate box {ann["bbox"]} (annotation id {ann.get("id")}) in '
                    f'image "{img_info["file_name"]}" of size {width}x{height}')
                self.num_skipped_boxes += 1
                continue
            kept.append(ann)
        raw_data_info = dict(raw_data_info, raw_ann_info=kept)
        return super().parse_data_info(raw_data_info)

    def load_data_list(self) -> List[dict]:
        data_list = super().load_data_list()
        valid = [d for d in data_list if '_invalid_image' not in d]
        self.num_skipped_images = len(data_list) - len(valid)
        if self.num_skipped_images or self.num_skipped_boxes:
            print_log(
                f'CheckedCocoDataset({self.ann_file}): skipped '
                f'{self.num_skipped_images} images with missing files and '
                f'{self.num_skipped_boxes} degenerate boxes.', logger='current')
        return valid
