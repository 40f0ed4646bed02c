"""Build the embedded demo dataset offline: scikit-learn's handwritten digits written in
the official ImageNet on-disk layout (so the same dataset classes read it).

    python tools/dataset_converters/make_digits_dataset.py --out data/digits [--size 32]

Layout written (10 classes, wnids ``d0000000`` .. ``d0000009``)::

    OUT/labels.txt                                  wnid,class name
    OUT/train/<wnid>/<wnid>_<idx>.JPEG             ~80 % of the 1,797 images
    OUT/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG  the rest (stratified, fixed seed)

The 8x8 grey digits are upsampled (bicubic) to ``--size`` and saved as RGB. Run
``tools/dataset_converters/make_imagenet_extra.py`` afterwards for the ``extra/`` files
(tools/demo.py does both).
"""
import argparse
import os
import os.path as osp

import numpy as np
from PIL import Image


def make_digits_dataset(out: str, size: int = 32, val_fraction: float = 0.2,
                        seed: int = 0) -> dict:
    """Write the digits dataset and return the number of images per split."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, labels = digits.images, digits.target
    rng = np.random.RandomState(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_val[idx[:int(round(len(idx) * val_fraction))]] = True
    wnids = [f'd{c:07d}' for c in range(10)]
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'labels.txt'), 'w') as f:
        for c, wnid in enumerate(wnids):
            f.write(f'{wnid},digit {c}\n')
    counts = {'train': 0, 'val': 0}
    for i, (img, label) in enumerate(zip(images, labels)):
        split = 'val' if is_val[i] else 'train'
        wnid = wnids[label]
        folder = osp.join(out, split, wnid)
        os.makedirs(folder, exist_ok=True)
        name = (f'{wnid}_{i + 1}.JPEG' if split == 'train' else
                f'ILSVRC2012_val_{i + 1:08d}.JPEG')
        grey = (img / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
        pil = Image.fromarray(grey, mode='L').resize((size, size), Image.BICUBIC)
        pil.convert('RGB').save(osp.join(folder, name), quality=95)
        counts[split] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/digits', help='output folder')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--val-fraction', type=float, default=0.2)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    counts = make_digits_dataset(args.out, args.size, args.val_fraction, args.seed)
    print(f'wrote {counts["train"]} train and {counts["val"]} val images to {args.out}')


if __name__ == '__main__':
    main()
