"""Data pieces of the DINOv3 high-resolution adaptation stage.

The official stage draws one (global, local, Gram-teacher) crop-size triple per iteration
with ``crops.global_local_crop_pairs_ratios``, so every batch has one resolution:
:class:`MultiResolutionBatchSampler` picks the triple per batch (same on every rank) and
encodes it in the indices, :class:`MultiResolutionDataset` decodes it and crops with the
matching :class:`~dino_mm.datasets.transforms.DINOMultiCrop`.
"""
import random
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset, Sampler

from dino_mm.registry import DATA_SAMPLERS, DATASETS, TRANSFORMS

__all__ = ['MultiResolutionDataset', 'MultiResolutionBatchSampler']


@DATASETS.register_module()
class MultiResolutionDataset(Dataset):
    """Apply one of several multi-crop transforms, chosen by the sampled index.

    Index ``r * len(dataset) + i`` returns sample ``i`` cropped with crop-size triple
    ``r``; :class:`MultiResolutionBatchSampler` emits such indices with one ``r`` per
    batch (official high-resolution adaptation: one resolution pair per iteration).

    Args:
        dataset (dict | Dataset): Inner dataset whose pipeline ends with a PIL image in
            ``img`` (e.g. ``dino_mm.ImageNet`` + ``dino_mm.LoadImagePIL``).
        multi_crop (dict): ``dino_mm.DINOMultiCrop`` config without the sizes.
        global_crops_sizes (Sequence[int]): Official ``crops.global_crops_size`` list.
        local_crops_sizes (Sequence[int]): Official ``crops.local_crops_size`` list.
        gram_teacher_crops_sizes (Sequence[int], optional): Official
            ``crops.gram_teacher_crops_size`` list, same length.
    """

    def __init__(self,
                 dataset: Union[dict, Dataset],
                 multi_crop: dict,
                 global_crops_sizes: Sequence[int],
                 local_crops_sizes: Sequence[int],
                 gram_teacher_crops_sizes: Optional[Sequence[int]] = None) -> None:
        sizes = [list(global_crops_sizes), list(local_crops_sizes)]
        if gram_teacher_crops_sizes is not None:
            sizes.append(list(gram_teacher_crops_sizes))
        if len({len(s) for s in sizes}) != 1 or not sizes[0]:
            raise ValueError('MultiResolutionDataset: global_crops_sizes, local_crops_sizes and '
                             'gram_teacher_crops_sizes must be non-empty lists of equal length, '
                             f'got {sizes}.')
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.resolutions: List[Tuple[int, int, Optional[int]]] = [
            (g, loc, sizes[2][i] if len(sizes) == 3 else None)
            for i, (g, loc) in enumerate(zip(sizes[0], sizes[1]))
        ]
        self.transforms = []
        for g, loc, gram in self.resolutions:
            cfg = dict(dict(type='dino_mm.DINOMultiCrop'), **multi_crop)
            cfg.update(global_crops_size=g, local_crops_size=loc)
            if gram is not None:
                cfg['gram_teacher_crops_size'] = gram
            self.transforms.append(TRANSFORMS.build(cfg))

    @property
    def metainfo(self) -> dict:
        return getattr(self.dataset, 'metainfo', {})

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    @property
    def num_resolutions(self) -> int:
        return len(self.resolutions)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        n = len(self.dataset)
        res, i = divmod(int(index), n)
        if res >= self.num_resolutions:
            raise IndexError(f'MultiResolutionDataset: index {index} encodes resolution {res}, '
                             f'but only {self.num_resolutions} are configured.')
        return self.transforms[res](self.dataset[i])


@DATA_SAMPLERS.register_module()
class MultiResolutionBatchSampler(Sampler):
    """Group a sampler's indices into batches and give each batch one resolution.

    The resolution of batch ``k`` is drawn with probabilities ``ratios`` from a generator
    seeded with ``seed`` (identical on every rank, so all ranks use the same sizes in a
    step, as the official combined loader does). Indices are encoded for
    :class:`MultiResolutionDataset` as ``resolution * len(dataset) + index``.

    Args:
        sampler (Sampler): Index sampler (e.g. ``InfiniteSampler``), set by the runner.
        batch_size (int): Per-rank batch size, set by the runner.
        ratios (Sequence[float]): Official ``global_local_crop_pairs_ratios``.
        drop_last (bool): Drop an incomplete final batch. Defaults to True.
        seed (int): Resolution RNG seed. Defaults to 0.
    """

    def __init__(self,
                 sampler: Sampler,
                 batch_size: int,
                 ratios: Sequence[float],
                 drop_last: bool = True,
                 seed: int = 0) -> None:
        if not ratios or any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError('MultiResolutionBatchSampler: ratios must be non-negative with a '
                             f'positive sum, got {ratios}.')
        dataset = getattr(sampler, 'dataset', None)
        n_res = getattr(dataset, 'num_resolutions', None)
        if n_res is not None and n_res != len(ratios):
            raise ValueError(f'MultiResolutionBatchSampler: {len(ratios)} ratios for '
                             f'{n_res} resolutions of the dataset; give one ratio per crop-size '
                             'triple.')
        self.sampler = sampler
        self.batch_size = batch_size
        self.ratios = [float(r) / sum(ratios) for r in ratios]
        self.drop_last = drop_last
        self.seed = seed
        self._n = len(dataset) if dataset is not None else None

    def _encode(self, indices: List[int], res: int) -> List[int]:
        n = self._n if self._n is not None else len(self.sampler)
        return [res * n + i for i in indices]

    def __iter__(self) -> Iterator[List[int]]:
        rng = random.Random(self.seed + 1009 * getattr(self.sampler, 'epoch', 0))
        batch: List[int] = []
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                res = rng.choices(range(len(self.ratios)), weights=self.ratios)[0]
                yield self._encode(batch, res)
                batch = []
        if batch and not self.drop_last:
            res = rng.choices(range(len(self.ratios)), weights=self.ratios)[0]
            yield self._encode(batch, res)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)
