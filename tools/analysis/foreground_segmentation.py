"""Foreground segmentation from a few labelled patches.

A logistic-regression classifier on patch features (as in the DINOv3 foreground
notebook) is trained from binary masks (``--train IMAGE MASK``, repeatable) and/or
boxes drawn on one image (``--box-image IMAGE --fg-box X0,Y0,X1,Y1 --bg-box ...``),
then predicts a foreground probability for every patch of the given images. Each
output PNG shows the image, the probability map and an overlay.

Example::

    python tools/analysis/foreground_segmentation.py test.jpg --train train.jpg mask.png \\
        --arch dinov3_vits16 --weights dinov3_vits16_pretrain.pth --out work_dirs/fg
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

import numpy as np

from dino_mm.apis import (ForegroundClassifier, foreground_probability, heatmap,
                          load_image, overlay_mask, patch_labels_from_mask, save_png,
                          side_by_side)
from dino_mm.apis.cli import add_model_args, build_extractor


def _box(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f'box {text!r} must look like X0,Y0,X1,Y1')
    return values


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('images', nargs='+', help='images to segment')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--train', nargs=2, action='append', default=[],
                        metavar=('IMAGE', 'MASK'),
                        help='training image and its binary mask (white = foreground)')
    parser.add_argument('--box-image', default=None, help='image the boxes refer to')
    parser.add_argument('--fg-box', type=_box, action='append', default=[],
                        help='foreground box X0,Y0,X1,Y1 in pixels of --box-image')
    parser.add_argument('--bg-box', type=_box, action='append', default=[],
                        help='background box X0,Y0,X1,Y1 in pixels of --box-image')
    parser.add_argument('--C', type=float, default=0.1,
                        help='inverse regularisation of the logistic regression')
    parser.add_argument('--median', type=int, default=3,
                        help='median filter size on the patch map (0 = off)')
    add_model_args(parser)
    return parser.parse_args(argv)


def _box_labels(item, fg_boxes, bg_boxes) -> np.ndarray:
    height, width = item.image.shape[:2]
    labels = np.full(item.grid, -1, dtype=np.int64)
    for boxes, value in ((bg_boxes, 0), (fg_boxes, 1)):
        for x0, y0, x1, y1 in boxes:
            pixel = np.zeros((height, width), dtype=bool)
            pixel[int(max(y0, 0)):int(min(y1, height)), int(max(x0, 0)):int(min(x1, width))] = 1
            labels[patch_labels_from_mask(pixel, item.grid) == 1] = value
    return labels


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    if not args.train and not (args.box_image and args.fg_box and args.bg_box):
        raise SystemExit('Give training labels: --train IMAGE MASK, or --box-image with '
                         'at least one --fg-box and one --bg-box.')
    extractor = build_extractor(args)
    feats, labels = [], []
    for image_path, mask_path in args.train:
        item = extractor.image_features(image_path, args.size)
        mask = load_image(mask_path)[..., 0] > 127
        if mask.shape != item.image.shape[:2]:
            raise SystemExit(f'Mask {mask_path!r} is {mask.shape[1]}x{mask.shape[0]} but '
                             f'image {image_path!r} is '
                             f'{item.image.shape[1]}x{item.image.shape[0]}.')
        feats.append(item.features)
        labels.append(patch_labels_from_mask(mask, item.grid))
    if args.box_image:
        item = extractor.image_features(args.box_image, args.size)
        feats.append(item.features)
        labels.append(_box_labels(item, args.fg_box, args.bg_box))
    clf = ForegroundClassifier(C=args.C).fit(feats, labels)
    written = []
    for path in args.images:
        item = extractor.image_features(path, args.size)
        prob = foreground_probability(clf, item.features, item.image.shape[:2], args.median)
        stem = osp.splitext(osp.basename(path))[0]
        canvas = side_by_side([item.image, heatmap(prob), overlay_mask(item.image, prob)])
        written.append(save_png(canvas, osp.join(args.out, f'{stem}_fg.png')))
        np.save(osp.join(args.out, f'{stem}_fg.npy'), prob.astype(np.float32))
    print(f'wrote {len(written)} foreground map(s) to {args.out}')
    return written


if __name__ == '__main__':
    main(sys.argv[1:])
