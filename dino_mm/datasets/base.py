"""Shared pieces of the dino_mm datasets: corrupt-image skipping, mmap'ed entries, and the
check that a dataset is not empty."""
import logging
import os
from typing import Any, Optional

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from dino_mm.datasets.transforms.loading import CorruptImageError

__all__ = ['NonEmptyMixin', 'SkipCorruptMixin', 'EntriesDataset', 'load_extra']


def load_extra(extra: str, filename: str, how_to_fix: str) -> np.ndarray:
    """``np.load(<extra>/<filename>, mmap_mode='r')`` with an actionable error."""
    path = os.path.join(extra, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Missing dataset metadata file "{path}". {how_to_fix}')
    return np.load(path, mmap_mode='r')


class NonEmptyMixin:
    """``full_init()`` raises a ``ValueError`` when the dataset has no sample.

    An empty dataset is never what the user meant, and MMEngine's ``InfiniteSampler``
    (iteration-based training) then spins forever at 100 % CPU waiting for its first
    index. The error names the dataset's sources (``data_root``, ``split``,
    ``ann_file`` ... whatever the dataset has) and what to do; subclasses add a
    dataset-specific hint with ``_empty_hint()``. It runs at build time unless the
    config sets ``lazy_init=True`` (then when the sampler first asks for the length).
    A local ``data_root`` that does not exist is reported as such first
    (``FileNotFoundError``; ``_root_hint()`` says what the folder should hold).
    """

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        self._check_data_root()
        super().full_init()
        self._check_not_empty(len(self))

    def _serialize_data(self):
        # MMEngine serializes before it could be checked (and fails on an empty list
        # with "need at least one array to concatenate").
        self._check_not_empty(len(self.data_list))
        return super()._serialize_data()

    def _empty_hint(self) -> str:
        return 'Check data_root / ann_file / data_prefix in the dataset config.'

    def _root_hint(self) -> str:
        return 'the dataset files'

    def _check_data_root(self) -> None:
        """A local ``data_root`` that does not exist is named as such, before the
        dataset looks for its metadata / annotation files inside it (whose own
        "missing file" errors would hide the real cause)."""
        root = str(getattr(self, 'data_root', None) or '')
        if not root or '://' in root or os.path.isdir(root):
            return  # unset, a remote backend (s3://, http://), or present
        what = 'is a file, not a folder' if os.path.exists(root) else 'does not exist'
        split = getattr(self, 'split', None)
        raise FileNotFoundError(
            f'{type(self).__name__}{f" (split {split})" if split else ""}: data_root '
            f'"{root}" {what} (resolved from {os.getcwd()!r} when relative). Set '
            f'data_root in the dataset config (e.g. --cfg-options '
            f'train_dataloader.dataset.data_root=/path/to/dataset) to the folder holding '
            f'{self._root_hint()}, or create it / mount the storage that holds it.')

    def _check_not_empty(self, num_samples: int) -> None:
        if num_samples > 0:
            return
        where = []
        root = str(getattr(self, 'data_root', None) or '').rstrip('/')
        for key in ('data_root', 'split', 'extra', 'ann_file', 'data_prefix'):
            value = getattr(self, key, None)
            if isinstance(value, dict):  # the prefixes MMEngine joined with data_root
                value = {k: v for k, v in value.items()
                         if v and str(v).rstrip('/') != root} or None
            if value not in (None, ''):
                where.append(f'{key}={value!r}')
        indices = getattr(self, '_indices', None)
        if indices is not None:
            where.append(f'indices={indices!r}')
            hint = ('The dataset config selects no sample through `indices`; remove it or '
                    'give a positive count / a non-empty list.')
        else:
            hint = self._empty_hint()
            if getattr(self, 'filter_cfg', None):
                hint += f' (filter_cfg={self.filter_cfg!r} may have removed every sample.)'
        raise ValueError(f'{type(self).__name__} ({", ".join(where) or "no source set"}) has '
                         f'no samples; training on it would wait forever for the first '
                         f'batch. {hint}')


class SkipCorruptMixin(NonEmptyMixin):
    """``skip_corrupt``: replace unreadable samples by the next readable one.

    When ``skip_corrupt`` is True, a :class:`CorruptImageError` raised while
    preparing sample ``i`` is counted in ``num_skipped`` (per process: DataLoader
    workers keep their own counters), logged with the running count, and sample
    ``i + 1`` (wrapping around) is returned instead, in train and test mode alike.
    When False the error propagates, naming the file. An empty dataset is an error
    (see :class:`NonEmptyMixin`).
    """

    skip_corrupt: bool = False
    num_skipped: int = 0

    def prepare_data(self, idx: int) -> Any:
        try:
            return super().prepare_data(idx)
        except CorruptImageError as e:
            if not self.skip_corrupt:
                raise
            self.num_skipped += 1
            print_log(f'{type(self).__name__}: skipped corrupt sample {idx} '
                      f'({self.num_skipped} skipped so far in this process): {e}',
                      logger='current', level=logging.WARNING)
            return None

    def __getitem__(self, idx: int) -> Any:
        if not self._fully_initialized:
            self.full_init()
        length = len(self)
        for _ in range(self.max_refetch + 1):
            data = self.prepare_data(idx)
            if data is not None:
                return data
            idx = (idx + 1) % length
        raise RuntimeError(f'{type(self).__name__}: {self.max_refetch + 1} consecutive samples '
                           'could not be loaded; check the dataset files.')


class EntriesDataset(SkipCorruptMixin, BaseDataset):
    """A dataset whose samples come from a memory-mapped numpy ``entries`` array.

    Unlike MMEngine's list-of-dicts storage this keeps 1M+ entries shared between
    DataLoader workers at no cost; ``get_data_info`` builds each dict on demand.
    Subclasses implement ``_load_entries()`` (set ``self._entries``) and
    ``_entry_info(entry)``.
    """

    _entries: Optional[np.ndarray] = None

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        self._check_data_root()
        self._load_entries()
        self._index = None
        if self._indices is not None:
            indices = self._indices
            self._index = (np.arange(indices) if isinstance(indices, int) else
                           np.asarray(indices, dtype=np.int64))
        self._check_not_empty(len(self._index) if self._index is not None
                              else len(self._entries))
        self._fully_initialized = True

    def _load_entries(self) -> None:
        raise NotImplementedError

    def _entry_info(self, entry: np.void, idx: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        if not self._fully_initialized:
            self.full_init()
        return len(self._index) if self._index is not None else len(self._entries)

    def get_data_info(self, idx: int) -> dict:
        if not self._fully_initialized:
            self.full_init()
        if idx < 0:
            idx += len(self)
        real = int(self._index[idx]) if self._index is not None else idx
        info = self._entry_info(self._entries[real], real)
        info['sample_idx'] = idx
        return info

    def load_data_list(self):  # pragma: no cover - entries are read lazily
        raise NotImplementedError(f'{type(self).__name__} reads entries lazily; use '
                                  'get_data_info().')
