"""Shared pieces of the dino_mm datasets: corrupt-image skipping, mmap'ed entries."""
import logging
import os
from typing import Any, Optional

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from dino_mm.datasets.transforms.loading import CorruptImageError

__all__ = ['SkipCorruptMixin', 'EntriesDataset', 'load_extra']


def load_extra(extra: str, filename: str, how_to_fix: str) -> np.ndarray:
    """``np.load(<extra>/<filename>, mmap_mode='r')`` with an actionable error."""
    path = os.path.join(extra, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Missing dataset metadata file "{path}". {how_to_fix}')
    return np.load(path, mmap_mode='r')


class SkipCorruptMixin:
    """``skip_corrupt``: replace unreadable samples by the next readable one.

    When ``skip_corrupt`` is True, a :class:`CorruptImageError` raised while
    preparing sample ``i`` is counted in ``num_skipped`` (per process: DataLoader
    workers keep their own counters), logged with the running count, and sample
    ``i + 1`` (wrapping around) is returned instead, in train and test mode alike.
    When False the error propagates, naming the file.
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
        self._load_entries()
        self._index = None
        if self._indices is not None:
            indices = self._indices
            self._index = (np.arange(indices) if isinstance(indices, int) else
                           np.asarray(indices, dtype=np.int64))
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
