"""Regenerate the pictures of docs/feature_tools.md from scikit-image photographs.

No released weights are available where the docs are built, and a random backbone
gives noise, so the pictures use raw-pixel patch features (``PixelPatchFeatures``):
they show what each tool draws, not the quality of DINO features.

Example::

    python tools/analysis/make_docs_images.py --out docs/images
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

import numpy as np
from skimage import data

from dino_mm.apis import (ForegroundClassifier, PixelPatchFeatures, draw_matches,
                          foreground_probability, heatmap, labels_to_mask,
                          labels_to_patches, overlay_mask, patch_labels_from_mask,
                          pca_maps, propagate_labels, save_png, side_by_side,
                          sparse_matches, to_uint8, upsample_map)


def _composite(bg: np.ndarray, obj: np.ndarray, y0: int, x0: int, r: int):
    img = bg.copy()
    yy, xx = np.mgrid[-r:r, -r:r]
    disc = yy**2 + xx**2 < r * r
    img[y0:y0 + 2 * r, x0:x0 + 2 * r][disc] = obj[:2 * r, :2 * r][disc]
    mask = np.zeros(bg.shape[:2], bool)
    mask[y0:y0 + 2 * r, x0:x0 + 2 * r] = disc
    return img, mask


def main(argv: Optional[List[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='docs/images')
    args = parser.parse_args(argv)
    written = []

    ext = PixelPatchFeatures(8, center=True)
    images = [data.astronaut()[::2, ::2], data.chelsea()[::2, ::2]]
    items = [ext.image_features(im) for im in images]
    res = pca_maps([it.features for it in items], scaling='sigmoid')
    panels = []
    for it, rgb in zip(items, res.maps):
        h, w = it.image.shape[:2]
        panels += [it.image, to_uint8(upsample_map(rgb, h, w, mode='nearest'))]
    written.append(save_png(side_by_side(panels), osp.join(args.out, 'pca.png')))

    ext = PixelPatchFeatures(16)
    coffee = data.coffee()[::2, ::2]
    a, b = coffee[:160, :240], coffee[32:192, 48:288]
    ia, ib = ext.image_features(a), ext.image_features(b)
    m = sparse_matches(ia.features, ib.features, top_k=25)
    written.append(save_png(
        draw_matches(a, b, ia.patch_centers()[m.idx_a], ib.patch_centers()[m.idx_b]),
        osp.join(args.out, 'matches.png')))

    ext = PixelPatchFeatures(8)
    grass = np.repeat(data.grass()[:192, :192, None], 3, axis=-1)
    cat = data.chelsea()[50:, 150:]
    train, train_mask = _composite(grass, cat, 20, 30, 40)
    test, _ = _composite(grass, cat, 90, 80, 40)
    tr, te = ext.image_features(train), ext.image_features(test)
    clf = ForegroundClassifier().fit([tr.features], [patch_labels_from_mask(train_mask, tr.grid)])
    prob = foreground_probability(clf, te.features, test.shape[:2])
    written.append(save_png(side_by_side([test, heatmap(prob), overlay_mask(test, prob)]),
                            osp.join(args.out, 'foreground.png')))

    frames = [_composite(grass[:160, :160], cat, 20 + 8 * t, 20 + 12 * t, 32)
              for t in range(4)]
    feats = [ext.image_features(f).features for f, _ in frames]
    soft = propagate_labels(feats, labels_to_patches(frames[0][1].astype(int), feats[0].shape[:2]))
    panels = [overlay_mask(f, (labels_to_mask(s, m.shape) == 1).astype(float), alpha=0.6)
              for (f, m), s in zip(frames, soft)]
    written.append(save_png(side_by_side(panels), osp.join(args.out, 'propagation.png')))
    print('\n'.join(written))
    return written


if __name__ == '__main__':
    main(sys.argv[1:])
