"""Batch collation with iBOT masks (official ``collate_data_and_cast``)."""
import random
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from dino_mm.datasets.transforms.masking import MaskingGenerator
from dino_mm.registry import FUNCTIONS

__all__ = ['dino_collate', 'mask_index_fields']


@lru_cache(maxsize=16)
def _mask_generator(grid: Tuple[int, int], max_num_patches: float, min_num_patches: int,
                    min_aspect: float, max_aspect: Optional[float]) -> MaskingGenerator:
    return MaskingGenerator(grid, max_num_patches=max_num_patches,
                            min_num_patches=min_num_patches, min_aspect=min_aspect,
                            max_aspect=max_aspect)


def _crops(sample: Union[dict, Sequence], key: str):
    # Official samples are (augmentation dict, target) tuples; MMEngine pipelines
    # return the results dict itself.
    data = sample if isinstance(sample, dict) else sample[0]
    return data.get(key)


def _to_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not hasattr(torch, str(dtype)) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"dino_collate: unknown dtype {dtype!r}; use e.g. 'float16'.")
    return getattr(torch, dtype)


def mask_index_fields(collated_masks: torch.Tensor) -> dict:
    """The index fields the losses read from the (N, P) bool iBOT masks.

    Returns:
        dict: ``mask_indices_list`` (M,) flat indices of the masked tokens,
        ``masks_weight`` (M,) 1 / #masked tokens of each token's image, and
        ``n_masked_patches`` (1,) = M.
    """
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    per_image = 1 / collated_masks.sum(-1).clamp(min=1.0)
    masks_weight = per_image.unsqueeze(-1).expand_as(collated_masks)[collated_masks]
    return {'mask_indices_list': mask_indices_list, 'masks_weight': masks_weight,
            'n_masked_patches': torch.full((1, ), mask_indices_list.shape[0],
                                           dtype=torch.long)}


@FUNCTIONS.register_module()
def dino_collate(data_batch: Sequence[dict],
                 mask_ratio_min_max: Tuple[float, float] = (0.1, 0.5),
                 mask_probability: float = 0.5,
                 patch_size: int = 14,
                 dtype: Union[None, str, torch.dtype] = None,
                 min_num_patches: int = 4,
                 min_aspect: float = 0.3,
                 max_aspect: Optional[float] = None,
                 n_tokens: Optional[int] = None,
                 mask_generator: Optional[MaskingGenerator] = None) -> Dict[str, object]:
    """Stack multi-crop samples crop-major and draw iBOT masks for the global crops.

    Masks: of the ``n_g * B`` global images, ``int(n_g * B * mask_probability)`` get a
    block mask whose target size for image ``i`` is ``int(N * U(p_i, p_{i+1}))`` with
    ``p = linspace(min, max, n_masked + 1)``; the others get empty masks; the list is
    shuffled with Python ``random`` (as the official code, so seeds give equal masks).
    By default the mask generator is built from the global crop size like the
    official trainer: grid ``H/patch x W/patch``, at most
    ``0.5 * H // patch * W // patch`` patches per block (official operator order).

    Args:
        data_batch (Sequence[dict]): Pipeline outputs with ``global_crops`` and
            ``local_crops`` (lists of CHW tensors), optionally ``gram_teacher_crops``;
            ``(dict, target)`` tuples as in the official loader are accepted too.
        mask_ratio_min_max (tuple[float, float]): Defaults to (0.1, 0.5).
        mask_probability (float): Fraction of global images that are masked.
            Defaults to 0.5.
        patch_size (int): Backbone patch size. Defaults to 14.
        dtype (str | torch.dtype, optional): Cast of the crops (official: float16);
            None keeps float32. Defaults to None.
        min_num_patches (int): Mask generator block minimum. Defaults to 4.
        min_aspect (float): Defaults to 0.3.
        max_aspect (float, optional): Defaults to ``1 / min_aspect``.
        n_tokens (int, optional): Patches per global image; from the crop size if None.
        mask_generator (MaskingGenerator, optional): Use this generator instead.

    Returns:
        dict: ``collated_global_crops`` (n_g*B, 3, H, W), ``collated_local_crops``
        (n_l*B, 3, h, w), ``collated_masks`` (n_g*B, N) bool, ``mask_indices_list``
        (flat indices into ``collated_masks``), ``masks_weight`` (1 / #masked of the
        token's image, per masked token), ``upperbound`` (int), ``n_masked_patches``
        (long tensor of shape [1]) and ``collated_gram_teacher_crops`` when present.
    """
    if len(data_batch) == 0:
        raise ValueError('dino_collate got an empty batch.')
    first_global = _crops(data_batch[0], 'global_crops')
    if first_global is None:
        raise KeyError('dino_collate: samples need "global_crops" (put dino_mm.DINOMultiCrop '
                       'at the end of the dataset pipeline).')
    dtype = _to_dtype(dtype)
    n_global = len(first_global)
    n_local = len(_crops(data_batch[0], 'local_crops') or [])

    def stack(key: str, n: int) -> torch.Tensor:
        return torch.stack([_crops(s, key)[i] for i in range(n) for s in data_batch])

    collated_global = stack('global_crops', n_global)
    collated_local = stack('local_crops', n_local) if n_local else torch.empty(0)

    height, width = collated_global.shape[-2:]
    if mask_generator is None:
        grid = (height // patch_size, width // patch_size)
        max_patches = 0.5 * height // patch_size * width // patch_size
        mask_generator = _mask_generator(grid, max_patches, min_num_patches, min_aspect,
                                         max_aspect)
    if n_tokens is None:
        n_tokens = mask_generator.num_patches

    n_images = len(collated_global)
    n_masked = int(n_images * mask_probability)
    probs = torch.linspace(*mask_ratio_min_max, n_masked + 1)
    upperbound = 0
    masks = []
    for i in range(n_masked):
        lo, hi = probs[i], probs[i + 1]
        masks.append(torch.from_numpy(mask_generator(int(n_tokens * random.uniform(lo, hi)))))
        upperbound += int(n_tokens * hi)
    masks.extend(torch.from_numpy(mask_generator(0)) for _ in range(n_images - n_masked))
    random.shuffle(masks)

    collated_masks = torch.stack(masks).flatten(1)
    out = {
        'collated_global_crops': collated_global.to(dtype) if dtype else collated_global,
        'collated_local_crops': collated_local.to(dtype) if dtype else collated_local,
        'collated_masks': collated_masks,
        **mask_index_fields(collated_masks),
        'upperbound': upperbound,
    }
    if _crops(data_batch[0], 'gram_teacher_crops') is not None:
        gram = stack('gram_teacher_crops', len(_crops(data_batch[0], 'gram_teacher_crops')))
        out['collated_gram_teacher_crops'] = gram.to(dtype) if dtype else gram
    return out
