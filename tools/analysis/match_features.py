"""Patch correspondences between two images, drawn as lines on a side-by-side PNG.

``--mode dense`` matches every patch of A to its nearest neighbour in B (mutual
nearest neighbours by default); ``--mode sparse`` matches given keypoints
(``--keypoints x,y ...`` in pixels of A) or keeps the ``--top-k`` most distinctive
mutual matches.

Example::

    python tools/analysis/match_features.py a.jpg b.jpg --mode sparse --top-k 30 \\
        --arch dinov2_vits14 --weights dinov2_vits14_pretrain.pth --out matches.png
"""
import argparse
import json
import os.path as osp
import sys
from typing import List, Optional

import numpy as np

from dino_mm.apis import dense_matches, draw_matches, save_png, sparse_matches
from dino_mm.apis.cli import add_model_args, build_extractor


def _point(text: str) -> List[float]:
    try:
        x, y = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'keypoint {text!r} must look like X,Y') from None
    return [x, y]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('image_a')
    parser.add_argument('image_b')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--mode', choices=['dense', 'sparse'], default='dense')
    parser.add_argument('--no-mutual', action='store_true',
                        help='keep one-way nearest neighbours too')
    parser.add_argument('--keypoints', nargs='+', type=_point, default=None,
                        metavar='X,Y', help='pixel coordinates in image A (sparse mode)')
    parser.add_argument('--top-k', type=int, default=50,
                        help='number of matches kept in sparse mode without keypoints')
    parser.add_argument('--rank-by', choices=['distinctiveness', 'similarity'],
                        default='distinctiveness')
    parser.add_argument('--max-lines', type=int, default=150,
                        help='dense mode draws an evenly spaced subset of this size')
    parser.add_argument('--save-json', default=None,
                        help='also write the matches (pixel coordinates) as JSON')
    add_model_args(parser)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    extractor = build_extractor(args)
    a = extractor.image_features(args.image_a, args.size)
    b = extractor.image_features(args.image_b, args.size)
    mutual = not args.no_mutual
    if args.mode == 'dense':
        matches = dense_matches(a.features, b.features, mutual=mutual)
        if len(matches) > args.max_lines:
            matches = matches.select(
                np.linspace(0, len(matches) - 1, args.max_lines).round().astype(int))
    elif args.keypoints:
        matches = sparse_matches(a.features, b.features,
                                 query=a.pixel_to_patch(np.array(args.keypoints)))
    else:
        matches = sparse_matches(a.features, b.features, top_k=args.top_k, mutual=mutual,
                                 rank_by=args.rank_by)
    pts_a = a.patch_centers()[matches.idx_a]
    pts_b = b.patch_centers()[matches.idx_b]
    if args.keypoints:
        pts_a = np.array(args.keypoints, dtype=np.float64)
    save_png(draw_matches(a.image, b.image, pts_a, pts_b), args.out)
    if args.save_json:
        records = [dict(a=[float(v) for v in pa], b=[float(v) for v in pb],
                        similarity=float(s), mutual=bool(m))
                   for pa, pb, s, m in zip(pts_a, pts_b, matches.similarity, matches.mutual)]
        with open(args.save_json, 'w') as f:
            json.dump(dict(image_a=osp.abspath(args.image_a),
                           image_b=osp.abspath(args.image_b), matches=records), f, indent=1)
    print(f'{len(matches)} matches drawn to {args.out}')
    return args.out


if __name__ == '__main__':
    main(sys.argv[1:])
