"""ImageNet-1k in the official DINOv2 / DINOv3 layout (``extra/*.npy`` metadata)."""
import os
import re
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
from mmengine.logging import print_log

from dino_mm.datasets.base import EntriesDataset, load_extra
from dino_mm.registry import DATASETS

__all__ = ['ImageNet', 'dump_imagenet_extra', 'IMAGENET_SPLIT_LENGTHS']

IMAGENET_SPLIT_LENGTHS = {'TRAIN': 1_281_167, 'VAL': 50_000, 'TEST': 100_000}
_TOOL = 'tools/dataset_converters/make_imagenet_extra.py'
_IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def _check_split(split: str) -> str:
    split = str(split).upper()
    if split not in IMAGENET_SPLIT_LENGTHS:
        raise ValueError(f'ImageNet split must be one of {list(IMAGENET_SPLIT_LENGTHS)}, '
                         f'got {split!r}.')
    return split


def image_relpath(split: str, actual_index: int, class_id: Optional[str]) -> str:
    """Official path of an image relative to the ImageNet root."""
    if split == 'TRAIN':
        return os.path.join('train', class_id, f'{class_id}_{actual_index}.JPEG')
    name = f'ILSVRC2012_{split.lower()}_{actual_index:08d}.JPEG'
    parts = [split.lower()] + ([class_id] if class_id else []) + [name]
    return os.path.join(*parts)


def _read_labels(root: str) -> List[Tuple[str, str]]:
    path = os.path.join(root, 'labels.txt')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Missing "{path}": one "wnid,class name" line per class, in '
                                'class-index order (official DINOv2 layout).')
    labels = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if ',' not in line:
                raise ValueError(f'{path}:{lineno}: expected "wnid,class name", got {line!r}.')
            wnid, name = line.split(',', 1)  # class names may contain commas
            labels.append((wnid.strip(), name.strip().strip('"')))
    return labels


def _scan_class_folders(split_dir: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(path, class id) in torchvision ImageFolder order (sorted classes/files), and
    every class folder (sorted), including those without an image."""
    samples = []
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f'No class folders in "{split_dir}".')
    for class_id in classes:
        for dirpath, _, files in sorted(os.walk(os.path.join(split_dir, class_id),
                                                followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(_IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), class_id))
    return samples, classes


def _class_index(root: str, label_list: List[Tuple[str, str]]) -> dict:
    """wnid -> class index: the line order of ``labels.txt``, whatever folder is empty."""
    index = {}
    for i, (wnid, _) in enumerate(label_list):
        if wnid in index:
            raise ValueError(f'"{os.path.join(root, "labels.txt")}" lists class {wnid!r} '
                             f'twice (lines {index[wnid] + 1} and {i + 1}, counting '
                             'non-blank lines); keep one line per class.')
        index[wnid] = i
    return index


def _warn_classes_without_images(split: str, split_dir: str, root: str,
                                 label_list: List[Tuple[str, str]], folders: List[str],
                                 with_images: set) -> None:
    empty = [(i, w) for i, (w, _) in enumerate(label_list) if w not in with_images]
    if not empty:
        return
    on_disk = set(folders)
    listed = ', '.join(f'{w} (class {i}, {"empty folder" if w in on_disk else "no folder"})'
                       for i, w in empty[:10])
    more = f' and {len(empty) - 10} more' if len(empty) > 10 else ''
    warnings.warn(
        f'ImageNet {split}: {len(empty)} class(es) of "{os.path.join(root, "labels.txt")}" '
        f'have no image in "{split_dir}": {listed}{more}. They keep their class index '
        '(indices follow labels.txt, so the other classes do not shift) but have no '
        'sample in this split; add their images, or remove them from labels.txt if the '
        'dataset is meant to be a subset.', UserWarning, stacklevel=3)


def _actual_index(path: str) -> int:
    match = re.search(r'_(\d+)\.[^.]+$', os.path.basename(path))
    if match is None:
        raise ValueError(f'Cannot parse the numeric suffix of "{path}" (expected '
                         '<wnid>_<idx>.JPEG or ILSVRC2012_<split>_<8 digits>.JPEG).')
    return int(match.group(1))


def dump_imagenet_extra(root: str, extra: str,
                        splits: Sequence[str] = ('TRAIN', 'VAL', 'TEST')) -> List[str]:
    """Write the official ``extra`` metadata of an ImageNet folder.

    Files: ``entries-<SPLIT>.npy`` (structured: ``actual_index`` <u4, ``class_index``
    <u4 (uint32(-1) for TEST), ``class_id``, ``class_name``), and for TRAIN / VAL
    ``class-ids-<SPLIT>.npy`` / ``class-names-<SPLIT>.npy`` indexed by class index.
    Class indices follow the lines of ``labels.txt`` (the official ``dump_extra`` takes
    class id and name from line ``i`` for the ``i``-th sorted class folder, so both agree
    for the usual sorted ``labels.txt``). A class of ``labels.txt`` whose folder is empty
    or missing keeps its index (a ``UserWarning`` names it) instead of shifting every
    later class; for a subset, list only its classes in ``labels.txt``. Unlike the
    official code the TEST entries come from the files present in ``test/`` (the
    official one assumes all 100,000).

    Args:
        root (str): ImageNet root with ``train/``, ``val/``, ``test/``, ``labels.txt``.
        extra (str): Output folder.
        splits (Sequence[str]): Splits to write; missing split folders are skipped
            with a message.

    Returns:
        list[str]: The splits written.

    Raises:
        ValueError: A split folder exists but holds no image (nothing is written: a
            dataset built from it would have no sample).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f'ImageNet root "{root}" does not exist or is not a folder (resolved from '
            f'{os.getcwd()!r} when relative); pass the folder holding train/, val/, test/ '
            'and labels.txt (--root).')
    label_list = _read_labels(root)
    labels = dict(label_list)
    class_index = _class_index(root, label_list)
    # Index every split before writing anything: an empty split is an error, and a
    # failed run must not leave half of the files behind.
    indexed = []
    for split in (_check_split(s) for s in splits):
        split_dir = os.path.join(root, split.lower())
        if not os.path.isdir(split_dir):
            print_log(f'ImageNet: no "{split_dir}", skipping split {split}.', logger='current')
            continue
        if split == 'TEST':
            files = sorted(f for f in os.listdir(split_dir) if f.lower().endswith(_IMG_EXTENSIONS))
            rows = [(_actual_index(f), 2**32 - 1, '', '') for f in files]  # uint32(-1)
        else:
            samples, folders = _scan_class_folders(split_dir)
            class_ids = sorted({c for _, c in samples})
            missing = [c for c in class_ids if c not in labels]
            if missing:
                raise KeyError(f'Class folders {missing[:5]} of "{split_dir}" are not in '
                               f'"{os.path.join(root, "labels.txt")}".')
            rows = [(_actual_index(p), class_index[c], c, labels[c]) for p, c in samples]
            if rows:
                _warn_classes_without_images(split, split_dir, root, label_list, folders,
                                             set(class_ids))
        if not rows:
            layout = {'TRAIN': 'train/<wnid>/<wnid>_<idx>.JPEG',
                      'VAL': 'val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG',
                      'TEST': 'test/ILSVRC2012_test_<8 digits>.JPEG'}[split]
            raise ValueError(
                f'ImageNet root "{root}", split {split}: "{split_dir}" holds no image '
                f'(expected {layout}); nothing was written to "{extra}". Put the images '
                'there, or leave the split out (--splits / splits=...).')
        indexed.append((split, rows))
    os.makedirs(extra, exist_ok=True)
    written = []
    for split, rows in indexed:
        id_len = max([len(r[2]) for r in rows] + [len(w) for w, _ in label_list] + [1])
        name_len = max([len(r[3]) for r in rows] + [len(n) for _, n in label_list] + [1])
        dtype = np.dtype([('actual_index', '<u4'), ('class_index', '<u4'),
                          ('class_id', f'U{id_len}'), ('class_name', f'U{name_len}')])
        entries = np.array(rows, dtype=dtype)
        np.save(os.path.join(extra, f'entries-{split}.npy'), entries)
        if split != 'TEST':  # every class of labels.txt, also those without an image
            ids = np.array([w for w, _ in label_list], dtype=f'U{id_len}')
            names = np.array([n for _, n in label_list], dtype=f'U{name_len}')
            np.save(os.path.join(extra, f'class-ids-{split}.npy'), ids)
            np.save(os.path.join(extra, f'class-names-{split}.npy'), names)
        written.append(split)
    return written


@DATASETS.register_module()
class ImageNet(EntriesDataset):
    """ImageNet-1k with the official DINOv2 layout and ``extra`` metadata.

    Root layout: ``train/<wnid>/<wnid>_<idx>.JPEG``,
    ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``, ``test/ILSVRC2012_test_<8 digits>.JPEG``
    and ``labels.txt``. The ``extra`` folder holds the ``.npy`` files written by
    :func:`dump_imagenet_extra` (``python tools/dataset_converters/make_imagenet_extra.py
    --root R --extra E``), compatible with the official ones. Each sample dict has
    ``img_path``, ``gt_label`` (class index; -1 for TEST), ``class_id`` and
    ``sample_idx``; end the pipeline with your transforms (``dino_mm.LoadImagePIL``
    first).

    Args:
        split (str): ``'TRAIN'``, ``'VAL'`` or ``'TEST'``. Defaults to ``'TRAIN'``.
        data_root (str): ImageNet root.
        extra (str, optional): Metadata folder; ``<data_root>/extra`` when None.
        check_length (bool): Require the full official split length, as the official
            ``__len__`` does. Defaults to False so subsets work.
        skip_corrupt (bool): Skip unreadable images (see ``SkipCorruptMixin``).
            Defaults to False.
        **kwargs: ``pipeline``, ``test_mode``, ``lazy_init``, ``indices``,
            ``max_refetch``, ``metainfo`` of :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self,
                 split: str = 'TRAIN',
                 data_root: str = '',
                 extra: Optional[str] = None,
                 check_length: bool = False,
                 skip_corrupt: bool = False,
                 **kwargs) -> None:
        self.split = _check_split(split)
        self.extra = extra if extra is not None else os.path.join(data_root, 'extra')
        self.check_length = check_length
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        kwargs.setdefault('serialize_data', False)
        super().__init__(data_root=data_root, **kwargs)

    def _load_entries(self) -> None:
        how = (f'Generate it once with `python {_TOOL} --root {self.data_root} '
               f'--extra {self.extra}` (or pass extra=<folder> holding the official files).')
        self._entries = load_extra(self.extra, f'entries-{self.split}.npy', how)
        if self.check_length and len(self._entries) != IMAGENET_SPLIT_LENGTHS[self.split]:
            raise ValueError(f'ImageNet {self.split} has {len(self._entries)} entries in '
                             f'"{self.extra}", expected {IMAGENET_SPLIT_LENGTHS[self.split]}; '
                             'set check_length=False for subsets.')
        self.class_ids = self.class_names = None
        if self.split != 'TEST':
            self.class_ids = load_extra(self.extra, f'class-ids-{self.split}.npy', how)
            self.class_names = load_extra(self.extra, f'class-names-{self.split}.npy', how)
            self._metainfo.setdefault('classes', tuple(str(c) for c in self.class_names))

    def _root_hint(self) -> str:
        return ('the official ImageNet layout (train/, val/, test/, labels.txt; see '
                'dino_mm.ImageNet)')

    def _empty_hint(self) -> str:
        return (f'"{os.path.join(self.extra, f"entries-{self.split}.npy")}" lists no image: '
                f'the split folder "{os.path.join(self.data_root, self.split.lower())}" was '
                'empty when it was indexed. Put the images there (official layout, see '
                f'dino_mm.ImageNet) and regenerate the metadata with `python {_TOOL} '
                f'--root {self.data_root} --extra {self.extra}`.')

    def _entry_info(self, entry: np.void, idx: int) -> dict:
        class_id = None if self.split == 'TEST' else str(entry['class_id'])
        path = os.path.join(self.data_root,
                            image_relpath(self.split, int(entry['actual_index']), class_id))
        label = -1 if self.split == 'TEST' else int(entry['class_index'])
        return dict(img_path=path, gt_label=label, class_id=class_id)

    def get_targets(self) -> Optional[np.ndarray]:
        """Class indices of all samples (None for TEST), as the official dataset."""
        if not self._fully_initialized:
            self.full_init()
        if self.split == 'TEST':
            return None
        targets = self._entries['class_index']
        return targets[self._index] if self._index is not None else targets
