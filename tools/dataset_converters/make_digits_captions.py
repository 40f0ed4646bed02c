"""Build the embedded captioned demo dataset offline: scikit-learn's handwritten digits with
template captions, written in the official COCO-Captions layout (for dino.txt).

    python tools/dataset_converters/make_digits_captions.py --out data/digits_captions \
        [--image-size 32] [--seed 0]

Layout written (read by ``dino_mm.CocoCaptionsDataset``)::

    OUT/annotations/captions_train2017.json   {"info", "images", "annotations"}
    OUT/train2017/<12-digit id>.png           the train split of make_digits_dataset.py
    OUT/annotations/captions_val2017.json
    OUT/val2017/<12-digit id>.png             its val split

The images are those of ``make_digits_dataset.py`` (the same function renders them, with
the same split for the same ``--seed`` / ``--val-fraction``), so a model aligned on this
train split has never seen the images of the ``val`` split of ``data/digits``. Image
``id`` is the scikit-learn sample index + 1 (the ``<idx>`` / 8-digit number of the
``data/digits`` file names), and each image entry also carries its ``label``. Every image
gets 5 distinct captions, drawn from 8 templates with the digit's English word and
numeral by a ``RandomState(seed)``. Running it again on a complete folder does nothing; an
interrupted run is rebuilt (the annotation files are written last, atomically).
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import re
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

GENERATOR = 'tools/dataset_converters/make_digits_captions.py'
CAPTIONS_PER_IMAGE = 5
WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
TEMPLATES = (
    'a handwritten digit {word}',
    'a photo of the number {num}',
    'the digit {word} written by hand',
    'a small grey image of {a_word}',
    'a blurry scan of the numeral {num}',
    'a low resolution picture of the number {word}',
    'a white {num} drawn on a black background',
    'a pixelated handwritten {word}',
)
SPLITS = {'train': 'train2017', 'val': 'val2017'}
_OWN_FILE = re.compile(r'^\d{12}\.png$')  # the names this tool writes (COCO's are .jpg)


def _make_digits_module():
    """``tools/dataset_converters/make_digits_dataset.py``, imported from its path."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'make_digits_dataset.py')
    spec = importlib.util.spec_from_file_location('make_digits_dataset', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digit_captions(label: int, rng: np.random.RandomState) -> List[str]:
    """``CAPTIONS_PER_IMAGE`` distinct template captions of digit ``label``.

    Args:
        label (int): The digit, 0 to 9.
        rng (np.random.RandomState): Source of the template choice.

    Returns:
        list[str]: The captions, in the drawn order.
    """
    word = WORDS[label]
    a_word = ('an ' if word[0] in 'aeiou' and word != 'one' else 'a ') + word
    picks = rng.choice(len(TEMPLATES), CAPTIONS_PER_IMAGE, replace=False)
    return [TEMPLATES[k].format(word=word, num=label, a_word=a_word) for k in picks]


def render_digits_splits(work: str, image_size: int = 32, seed: int = 0,
                         val_fraction: float = 0.2) -> Dict[str, List[tuple]]:
    """The digits images of ``make_digits_dataset.py``'s train and val splits.

    ``make_digits_dataset`` renders and splits the images into ``work`` (ImageNet layout);
    its files are then read back, so the pixels are exactly those of ``data/digits``.

    Args:
        work (str): Scratch folder for ``make_digits_dataset``'s output.
        image_size (int): Image side in pixels.
        seed (int): Seed of the stratified split.
        val_fraction (float): Fraction of each class held out for val.

    Returns:
        dict: ``'train'`` / ``'val'`` -> sorted list of (sklearn index, label, RGB uint8
        array).
    """
    from sklearn.datasets import load_digits
    _make_digits_module().make_digits_dataset(work, size=image_size, val_fraction=val_fraction,
                                              seed=seed)
    with open(osp.join(work, 'labels.txt')) as f:
        class_index = {line.split(',', 1)[0]: i for i, line in enumerate(f) if line.strip()}
    targets = load_digits().target
    splits = {}
    for split in SPLITS:
        items = []
        for wnid in sorted(os.listdir(osp.join(work, split))):
            for name in os.listdir(osp.join(work, split, wnid)):
                match = re.search(r'_(\d+)\.JPEG$', name)
                if match is None:
                    continue
                index, label = int(match.group(1)) - 1, class_index[wnid]
                if targets[index] != label:  # the file naming of make_digits_dataset changed
                    raise RuntimeError(f'{GENERATOR}: "{osp.join(split, wnid, name)}" of '
                                       f'make_digits_dataset is not sklearn digit {index} '
                                       f'(label {targets[index]}, folder says {label}); '
                                       'update render_digits_splits to its new layout.')
                with Image.open(osp.join(work, split, wnid, name)) as img:
                    items.append((index, label, np.asarray(img.convert('RGB'))))
        splits[split] = sorted(items, key=lambda item: item[0])
    return splits


def _ann_path(out: str, split: str) -> str:
    return osp.join(out, 'annotations', f'captions_{SPLITS[split]}.json')


def _existing_counts(out: str, params: dict) -> Optional[Dict[str, int]]:
    """The counts of a complete folder built with ``params``, else None (rebuild).

    Raises:
        FileExistsError: An annotation file there was not written by this tool.
    """
    counts, complete = {}, True
    for split, folder in SPLITS.items():  # every file is checked for its origin first
        path = _ann_path(out, split)
        if not osp.isfile(path):
            complete = False
            continue
        try:
            with open(path, encoding='utf-8') as f:
                ann = json.load(f)
        except ValueError:
            ann = None  # this tool writes atomically: not one of its files
        info = ann.get('info') if isinstance(ann, dict) else None
        if not isinstance(info, dict) or info.get('generator') != GENERATOR:
            raise FileExistsError(f'{GENERATOR}: "{path}" exists and was not written by this '
                                  'tool; refusing to overwrite it. Choose another --out, or '
                                  'delete the file if it is a leftover.')
        complete = complete and info.get('params') == params and all(
            osp.isfile(osp.join(out, folder, img['file_name'])) for img in ann['images'])
        counts[split] = len(ann['images'])
        counts[f'{split}_captions'] = len(ann['annotations'])
    return counts if complete else None


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def write_digits_captions(out: str, image_size: int = 32, seed: int = 0,
                          val_fraction: float = 0.2) -> Dict[str, int]:
    """Write the captioned digits dataset to ``out`` (COCO-Captions layout).

    Does nothing when ``out`` already holds a complete dataset written with the same
    arguments; otherwise (missing, half-written or other arguments) writes it, the
    annotation files last, each atomically.

    Args:
        out (str): Output folder.
        image_size (int): Image side in pixels (as ``make_digits_dataset.py --size``).
            Defaults to 32.
        seed (int): Seed of the train / val split (as ``make_digits_dataset.py --seed``;
            keep both equal so that the val images stay unseen) and of the caption
            templates. Defaults to 0.
        val_fraction (float): As ``make_digits_dataset.py --val-fraction``. Defaults to 0.2.

    Returns:
        dict: ``train`` / ``val`` (images) and ``train_captions`` / ``val_captions``.

    Raises:
        FileExistsError: ``out`` holds an annotation file not written by this tool.
    """
    params = dict(image_size=image_size, seed=seed, val_fraction=val_fraction)
    counts = _existing_counts(out, params)
    if counts is not None:
        return counts
    for split in SPLITS:  # an older build (ours, checked above) is stale from now on
        if osp.isfile(_ann_path(out, split)):
            os.remove(_ann_path(out, split))
    with tempfile.TemporaryDirectory() as work:
        splits = render_digits_splits(work, image_size, seed, val_fraction)
    rng = np.random.RandomState(seed)
    captions = {}  # drawn in sklearn index order, so they do not depend on the split
    for index, label, _ in sorted((item for items in splits.values() for item in items),
                                  key=lambda item: item[0]):
        captions[index] = digit_captions(label, rng)
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    anns = {}
    for split, folder in SPLITS.items():
        os.makedirs(osp.join(out, folder), exist_ok=True)
        keep = {f'{index + 1:012d}.png' for index, _, _ in splits[split]}
        for name in os.listdir(osp.join(out, folder)):  # from a build with another split
            if _OWN_FILE.match(name) and name not in keep:
                os.remove(osp.join(out, folder, name))
        images, annotations = [], []
        for index, label, pixels in splits[split]:
            image_id = index + 1
            file_name = f'{image_id:012d}.png'
            Image.fromarray(pixels).save(osp.join(out, folder, file_name))
            images.append(dict(id=image_id, file_name=file_name, height=pixels.shape[0],
                               width=pixels.shape[1], label=int(label)))
            annotations.extend(
                dict(id=image_id * 10 + k, image_id=image_id, caption=text)
                for k, text in enumerate(captions[index]))
        info = dict(description=f'scikit-learn handwritten digits, {split} split, with '
                    'template captions', generator=GENERATOR, params=params)
        anns[split] = dict(info=info, images=images, annotations=annotations)
    counts = {}
    for split in SPLITS:  # last: a folder without both files is rebuilt next time
        _write_json_atomic(_ann_path(out, split), anns[split])
        counts[split] = len(anns[split]['images'])
        counts[f'{split}_captions'] = len(anns[split]['annotations'])
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/digits_captions', help='output folder')
    parser.add_argument('--image-size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0,
                        help='split and caption seed (the --seed of make_digits_dataset.py)')
    parser.add_argument('--val-fraction', type=float, default=0.2)
    args = parser.parse_args(argv)
    try:
        counts = write_digits_captions(args.out, args.image_size, args.seed, args.val_fraction)
    except FileExistsError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{args.out}: {counts["train"]} train images ({counts["train_captions"]} captions), '
          f'{counts["val"]} val images ({counts["val_captions"]} captions)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
