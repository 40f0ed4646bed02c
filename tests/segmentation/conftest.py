"""Tiny ADE20K / VOC2012 datasets written on disk in the official layouts.

Images are scikit-image photographs resized to a few dozen pixels; masks come from
grey-level thresholds (3 classes) so they follow real image structure.
"""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

IMG_HW = (56, 70)  # not a multiple of 14 in width: exercises center padding


def _photo_and_mask(img: np.ndarray, hw=IMG_HW):
    photo = np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))
    grey = photo.astype(np.float32).mean(axis=2)
    bins = np.quantile(grey, [1 / 3, 2 / 3])
    mask = np.digitize(grey, bins).astype(np.uint8)  # 0, 1, 2
    return photo, mask


def _voc_palette():
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette.reshape(-1).tolist()


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory, real_images):
    """``ADEChallengeData2016`` with 3 training and 2 validation images.

    Annotation values are 1..3 (classes 0..2 after reduce_zero_label) and 0 (ignored)
    in the top-left 8x8 corner.
    """
    root = tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016'
    names = sorted(real_images)
    splits = {'training': names[:3], 'validation': names[3:5]}
    for split, split_names in splits.items():
        os.makedirs(root / 'images' / split)
        os.makedirs(root / 'annotations' / split)
        for i, name in enumerate(split_names):
            photo, mask = _photo_and_mask(real_images[name])
            ann = mask + 1
            ann[:8, :8] = 0
            stem = f'ADE_{split[:5]}_{i:08d}'
            Image.fromarray(photo).save(root / 'images' / split / f'{stem}.jpg', quality=95)
            Image.fromarray(ann).save(root / 'annotations' / split / f'{stem}.png')
    return str(root)


@pytest.fixture(scope='session')
def voc_root(tmp_path_factory, real_images):
    """``VOC2012`` with palette PNGs (classes 0..2, 255 on a 2-px border)."""
    root = tmp_path_factory.mktemp('voc') / 'VOC2012'
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(root / sub)
    names = sorted(real_images)
    palette = _voc_palette()
    ids = []
    for i, name in enumerate(names):
        photo, mask = _photo_and_mask(real_images[name])
        mask[:2, :] = 255
        stem = f'2007_{i:06d}'
        ids.append(stem)
        Image.fromarray(photo).save(root / 'JPEGImages' / f'{stem}.jpg', quality=95)
        png = Image.fromarray(mask, mode='P')
        png.putpalette(palette)
        png.save(root / 'SegmentationClass' / f'{stem}.png')
    (root / 'ImageSets/Segmentation/train.txt').write_text('\n'.join(ids[:3]) + '\n')
    (root / 'ImageSets/Segmentation/val.txt').write_text('\n'.join(ids[3:]) + '\n')
    return str(root)


def read_annotation(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


__all__ = ['IMG_HW', 'read_annotation', 'osp']
