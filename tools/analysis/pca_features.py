"""PCA colour maps of patch features.

The first three principal components of the patch features of all given images
(fitted jointly, optionally on foreground patches only) are shown as RGB next to each
image.

Example::

    python tools/analysis/pca_features.py img1.jpg img2.jpg --arch dinov2_vits14 \\
        --weights dinov2_vits14_pretrain.pth --foreground threshold --out work_dirs/pca
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

import numpy as np

from dino_mm.apis import (ForegroundClassifier, load_image, patch_labels_from_mask,
                          pca_maps, save_png, side_by_side, to_uint8, upsample_map)
from dino_mm.apis.cli import add_model_args, build_extractor


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--out', required=True, help='output folder for the PNGs')
    parser.add_argument('--foreground', choices=['none', 'threshold', 'classifier'],
                        default='none', help='which patches the PCA is fitted on and '
                        'coloured (others are black)')
    parser.add_argument('--threshold', type=float, default=0.0,
                        help='threshold on the first component, in standard deviations')
    parser.add_argument('--invert', action='store_true',
                        help='keep patches below the threshold instead of above')
    parser.add_argument('--fg-train', nargs=2, metavar=('IMAGE', 'MASK'),
                        help='image and binary mask that train the foreground classifier '
                        '(for --foreground classifier)')
    parser.add_argument('--scaling', choices=['minmax', 'sigmoid'], default='minmax',
                        help='how projections become colours (see docs/feature_tools.md)')
    add_model_args(parser)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    extractor = build_extractor(args)
    items = [extractor.image_features(path, args.size) for path in args.images]
    feats = [it.features for it in items]
    if args.foreground == 'none':
        foreground = None
    elif args.foreground == 'threshold':
        foreground = 'threshold'
    else:
        if not args.fg_train:
            raise SystemExit('--foreground classifier needs --fg-train IMAGE MASK.')
        train = extractor.image_features(args.fg_train[0], args.size)
        mask = load_image(args.fg_train[1])[..., 0] > 127
        if mask.shape != train.image.shape[:2]:
            raise SystemExit(f'Mask {args.fg_train[1]!r} is {mask.shape}, image '
                             f'{args.fg_train[0]!r} is {train.image.shape[:2]}.')
        clf = ForegroundClassifier().fit([train.features],
                                         [patch_labels_from_mask(mask, train.grid)])
        foreground = [clf.predict_proba(f) for f in feats]
    result = pca_maps(feats, 3, foreground=foreground, threshold=args.threshold,
                      invert=args.invert, scaling=args.scaling)
    written = []
    for item, rgb in zip(items, result.maps):
        h, w = item.image.shape[:2]
        panel = to_uint8(upsample_map(rgb, h, w, mode='nearest'))
        stem = osp.splitext(osp.basename(item.name))[0]
        written.append(save_png(side_by_side([item.image, panel]),
                                osp.join(args.out, f'{stem}_pca.png')))
    print(f'PCA explained variance: {np.round(result.explained_variance, 4).tolist()}; '
          f'wrote {len(written)} PNG(s) to {args.out}')
    return written


if __name__ == '__main__':
    main(sys.argv[1:])
