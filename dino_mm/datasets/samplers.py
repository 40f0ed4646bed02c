"""Samplers for iteration-based pretraining."""
import random
from typing import Iterator, Optional, Sized

import numpy as np
import torch
from mmengine.dataset import InfiniteSampler

from dino_mm.registry import DATA_SAMPLERS

__all__ = ['SeededInfiniteSampler']


@DATA_SAMPLERS.register_module()
class SeededInfiniteSampler(InfiniteSampler):
    """MMEngine's ``InfiniteSampler`` that also re-seeds the process RNGs per sample.

    Before it hands out the ``i``-th index of its rank, the sampler seeds Python
    ``random``, NumPy and torch from ``(seed, rank, i)``. The sampler runs in the main
    process right before the batch it belongs to is loaded, so everything random that
    follows it there (multi-crop augmentations and iBOT masks when ``num_workers=0``,
    drop path and any other model randomness of the step) depends only on the
    iteration, not on the history of the run.

    Why: MMEngine does not checkpoint RNG states, and on resume it skips the
    already-trained batches by loading them again, without the model steps in between.
    With the plain ``InfiniteSampler`` a resumed run therefore sees other crops, masks
    and drop-path draws than the uninterrupted run (with it, both runs are
    bit-identical; ``tests/pretrain/test_dinov2_pretrain.py``). With worker processes
    (``num_workers > 0``) the augmentations run in the workers, which MMEngine seeds once
    per worker; the skip replays the same batches through them, so they match as well.

    The statistics of the augmentations are unchanged; only the seeding differs from
    the official loader (one seed per worker,
    docs/reference.md §6.13-§6.14).

    Args:
        dataset (Sized): The dataset.
        shuffle (bool): Shuffle the dataset. Defaults to True.
        seed (int, optional): Seed of the order and of the per-sample RNG seeds; a
            random seed shared by all ranks if None (set by the runner from
            ``randomness.seed``). Defaults to None.
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        if len(dataset) == 0:  # the infinite loop would spin forever without a word
            raise ValueError(f'SeededInfiniteSampler: the dataset {type(dataset).__name__} '
                             'has no samples; check its data_root / ann_file / indices.')
        super().__init__(dataset, shuffle=shuffle, seed=seed)
        self._position = 0

    def sample_seed(self, position: int) -> int:
        """32-bit seed of the process RNGs for this rank's ``position``-th sample."""
        entropy = [int(self.seed) & 0xFFFFFFFF, self.rank, position]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def __iter__(self) -> Iterator[int]:
        for index in self.indices:
            seed = self.sample_seed(self._position)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            self._position += 1
            yield index
