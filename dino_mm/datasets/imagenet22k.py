"""ImageNet-22k stored as one uncompressed tarball per class (official DINOv2 layout)."""
import gzip
import mmap
import os
import tarfile
from collections import OrderedDict
from typing import Optional

import numpy as np

from dino_mm.datasets.base import EntriesDataset, load_extra
from dino_mm.datasets.transforms.loading import CorruptImageError
from dino_mm.registry import DATASETS

__all__ = ['ImageNet22k', 'dump_imagenet22k_extra']

_TAR_BLOCK = 512


def dump_imagenet22k_extra(root: str, extra: str) -> int:
    """Index ``<root>/<wnid>.tar`` files into ``<extra>/entries.npy`` and ``class-ids.npy``.

    Offsets follow the official convention: ``start_offset`` is the tar header block
    of the member (the data starts 512 bytes later) and ``end_offset`` the end of its
    data. The official index is built from ``tar --block-number`` logs; this reads the
    tarballs with :mod:`tarfile` instead.

    Args:
        root (str): Folder with one tar per class.
        extra (str): Output folder.

    Returns:
        int: Number of entries written.
    """
    class_ids = sorted(f[:-4] for f in os.listdir(root) if f.endswith('.tar'))
    if not class_ids:
        raise FileNotFoundError(f'No <class_id>.tar files in "{root}".')
    rows = []
    for class_index, class_id in enumerate(class_ids):
        with tarfile.open(os.path.join(root, f'{class_id}.tar'), mode='r:') as tar:
            for member in tar:
                if member.isfile():
                    rows.append((class_index, class_id, member.offset_data - _TAR_BLOCK,
                                 member.offset_data + member.size, os.path.basename(member.name)))
    if not rows:
        raise ValueError(f'ImageNet-22k root "{root}": the {len(class_ids)} tarballs '
                         f'({class_ids[0]}.tar ...) hold no file; nothing was written to '
                         f'"{extra}". Check that the tarballs were copied completely.')
    offset_type = '<u4' if max(r[3] for r in rows) < 2**32 else '<u8'
    dtype = np.dtype([('class_index', '<u4'),
                      ('class_id', f'U{max(len(c) for c in class_ids)}'),
                      ('start_offset', offset_type), ('end_offset', offset_type),
                      ('filename', f'U{max(len(r[4]) for r in rows)}')])
    os.makedirs(extra, exist_ok=True)
    np.save(os.path.join(extra, 'entries.npy'), np.array(rows, dtype=dtype))
    np.save(os.path.join(extra, 'class-ids.npy'), np.array(class_ids))
    return len(rows)


@DATASETS.register_module()
class ImageNet22k(EntriesDataset):
    """ImageNet-22k read straight from per-class tarballs via ``mmap``.

    ``data_root`` holds ``<wnid>.tar``; ``extra`` holds ``entries.npy`` (fields
    ``class_index``, ``class_id``, ``start_offset``, ``end_offset``, ``filename``) and
    ``class-ids.npy`` — the official files, or those written by
    :func:`dump_imagenet22k_extra`. Samples carry the encoded bytes in ``img_bytes``
    (decoded by ``dino_mm.LoadImagePIL``), ``img_path`` as ``<tar>:<filename>`` for
    messages, and ``gt_label``. Gzip-wrapped members (a few in the real dataset, which
    the official code lists by index) are detected by their magic bytes.

    Args:
        data_root (str): Folder of the class tarballs.
        extra (str, optional): Metadata folder; ``<data_root>/extra`` when None.
        mmap_cache_size (int): Tarballs kept mapped per process. Defaults to 16.
        skip_corrupt (bool): Skip unreadable images. Defaults to False.
        **kwargs: Arguments of :class:`mmengine.dataset.BaseDataset`.
    """

    def __init__(self,
                 data_root: str = '',
                 extra: Optional[str] = None,
                 mmap_cache_size: int = 16,
                 skip_corrupt: bool = False,
                 **kwargs) -> None:
        self.extra = extra if extra is not None else os.path.join(data_root, 'extra')
        self.mmap_cache_size = mmap_cache_size
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        self._mmaps: 'OrderedDict[str, mmap.mmap]' = OrderedDict()
        kwargs.setdefault('serialize_data', False)
        super().__init__(data_root=data_root, **kwargs)

    def __getstate__(self) -> dict:
        # mmap objects cannot be pickled into DataLoader workers; each process maps
        # its own tarballs.
        state = self.__dict__.copy()
        state['_mmaps'] = OrderedDict()
        return state

    def _load_entries(self) -> None:
        how = ('Index the tarballs once with `python -c "from dino_mm.datasets import '
               f"dump_imagenet22k_extra; dump_imagenet22k_extra('{self.data_root}', "
               f"'{self.extra}')\"` or pass extra=<folder> holding the official files.")
        self._entries = load_extra(self.extra, 'entries.npy', how)
        self.class_ids = load_extra(self.extra, 'class-ids.npy', how)
        self._metainfo.setdefault('classes', tuple(str(c) for c in self.class_ids))

    def _root_hint(self) -> str:
        return 'the per-class tarballs <wnid>.tar'

    def _empty_hint(self) -> str:
        return (f'"{os.path.join(self.extra, "entries.npy")}" lists no image. Re-index the '
                f'tarballs of "{self.data_root}" with dino_mm.datasets.dump_imagenet22k_extra '
                'or pass extra=<folder> holding the official files.')

    def _tar(self, class_id: str) -> mmap.mmap:
        if class_id in self._mmaps:
            self._mmaps.move_to_end(class_id)
            return self._mmaps[class_id]
        path = os.path.join(self.data_root, f'{class_id}.tar')
        try:
            with open(path, 'rb') as f:
                mapped = mmap.mmap(f.fileno(), length=0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise CorruptImageError(f'Cannot map tarball "{path}": {e}') from e
        self._mmaps[class_id] = mapped
        if len(self._mmaps) > self.mmap_cache_size:
            self._mmaps.popitem(last=False)[1].close()
        return mapped

    def _entry_info(self, entry: np.void, idx: int) -> dict:
        class_id = str(entry['class_id'])
        source = f'{os.path.join(self.data_root, class_id)}.tar:{entry["filename"]}'
        start, end = int(entry['start_offset']), int(entry['end_offset'])
        data = self._tar(class_id)[start + _TAR_BLOCK:end]
        if len(data) < end - start - _TAR_BLOCK:
            raise CorruptImageError(f'"{source}" is truncated (offsets {start}-{end} beyond '
                                    'the end of the tarball); rebuild the extra files.')
        if data[:2] == b'\x1f\x8b':
            try:
                data = gzip.decompress(data)
            except OSError as e:
                raise CorruptImageError(f'Cannot gunzip "{source}": {e}') from e
        return dict(img_path=source, img_bytes=data, gt_label=int(entry['class_index']),
                    class_id=class_id)

    def get_targets(self) -> np.ndarray:
        """Class indices of all samples."""
        if not self._fully_initialized:
            self.full_init()
        targets = self._entries['class_index']
        return targets[self._index] if self._index is not None else targets
