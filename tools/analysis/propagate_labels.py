"""Propagate first-frame segmentation labels through a video with patch features.

The DINO / DINOv2 DAVIS recipe: each frame's patches take the softmax-weighted labels
of their top-k most similar patches in the first frame and the previous frames,
searched only within a local spatial window.

Example::

    python tools/analysis/propagate_labels.py frames/ first_mask.png \\
        --arch dinov2_vits14 --weights dinov2_vits14_pretrain.pth --out work_dirs/prop
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

import numpy as np

from dino_mm.apis import (labels_to_mask, labels_to_patches, list_images, propagate_labels,
                          save_png, side_by_side)
from dino_mm.apis.cli import add_model_args, build_extractor

# Colours of label 1, 2, ...; label 0 (background) stays transparent in overlays.
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]],
                   dtype=np.uint8)


def read_label_image(path: str) -> np.ndarray:
    """(H, W) class indices from a palette PNG (DAVIS style) or a grey/RGB mask.

    Palette images keep their indices; otherwise each distinct colour becomes a class,
    sorted so that black is 0.
    """
    from PIL import Image
    if not osp.isfile(path):
        raise FileNotFoundError(f'Label image not found: {path!r}.')
    try:
        with Image.open(path) as pil:
            if pil.mode == 'P':
                return np.asarray(pil).astype(np.int64)
            rgb = np.asarray(pil.convert('RGB'))
    except OSError as err:
        raise ValueError(f'Cannot read label image {path!r}: {err}') from err
    _, labels = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    return labels.reshape(rgb.shape[:2]).astype(np.int64)


def colorize(labels: np.ndarray) -> np.ndarray:
    return PALETTE[labels % len(PALETTE)]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('frames', nargs='+',
                        help='a folder of frames (sorted by name) or the frame files')
    parser.add_argument('--first-labels', required=True,
                        help='label image of the first frame (palette PNG or mask)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--n-last-frames', type=int, default=7)
    parser.add_argument('--topk', type=int, default=5)
    parser.add_argument('--temperature', type=float, default=0.1)
    parser.add_argument('--size-mask-neighborhood', type=int, default=12,
                        help='spatial search radius in patches (0 = whole frame)')
    add_model_args(parser, default_size=480)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    frames = (list_images(args.frames[0], recursive=False)
              if len(args.frames) == 1 and osp.isdir(args.frames[0]) else args.frames)
    if len(frames) < 2:
        raise SystemExit(f'Need at least two frames, got {frames}.')
    extractor = build_extractor(args)
    items = [extractor.image_features(f, args.size) for f in frames]
    first = read_label_image(args.first_labels)
    if first.shape != items[0].image.shape[:2]:
        raise SystemExit(f'First-frame labels {args.first_labels!r} are {first.shape}, the '
                         f'first frame {frames[0]!r} is {items[0].image.shape[:2]}.')
    soft = propagate_labels([it.features for it in items],
                            labels_to_patches(first, items[0].grid),
                            n_last_frames=args.n_last_frames, topk=args.topk,
                            temperature=args.temperature,
                            size_mask_neighborhood=args.size_mask_neighborhood)
    os.makedirs(args.out, exist_ok=True)
    written = []
    for i, (item, labels) in enumerate(zip(items, soft)):
        mask = first if i == 0 else labels_to_mask(labels, item.image.shape[:2])
        stem = osp.splitext(osp.basename(item.name))[0]
        np.save(osp.join(args.out, f'{stem}_labels.npy'), mask.astype(np.uint8))
        blend = item.image.copy()
        sel = mask > 0
        blend[sel] = (0.5 * blend[sel] + 0.5 * colorize(mask)[sel]).astype(np.uint8)
        written.append(save_png(side_by_side([blend, colorize(mask)]),
                                osp.join(args.out, f'{stem}_labels.png')))
    print(f'propagated labels through {len(items)} frames into {args.out}')
    return written


if __name__ == '__main__':
    main(sys.argv[1:])
