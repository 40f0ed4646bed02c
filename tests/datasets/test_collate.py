"""dino_collate: parity with the official collate_data_and_cast, mask statistics."""
import random
from functools import partial

import pytest
import torch

from dino_mm.datasets import dino_collate
from dino_mm.datasets.transforms import MaskingGenerator
from dino_mm.registry import FUNCTIONS

from tests.oracles import require

collate_mod = require('dinov2.data.collate')
masking = require('dinov2.data.masking')


def _samples(b, size=56, local=28, n_local=3, gram=None):
    out = []
    for _ in range(b):
        s = dict(global_crops=[torch.randn(3, size, size) for _ in range(2)],
                 local_crops=[torch.randn(3, local, local) for _ in range(n_local)])
        if gram:
            s['gram_teacher_crops'] = [torch.randn(3, gram, gram) for _ in range(2)]
        out.append(s)
    return out


@pytest.mark.parametrize('b, prob', [(4, 0.5), (5, 0.5), (3, 1.0), (2, 0.0)])
def test_parity_with_official(b, prob):
    size, patch = 56, 14
    samples = _samples(b)
    grid = size // patch
    ref_gen = masking.MaskingGenerator((grid, grid),
                                       max_num_patches=0.5 * size // patch * size // patch)
    for seed in range(3):
        random.seed(seed)
        ref = collate_mod.collate_data_and_cast([(s, None) for s in samples], (0.1, 0.5), prob,
                                                torch.half, n_tokens=grid * grid,
                                                mask_generator=ref_gen)
        random.seed(seed)
        got = dino_collate(samples, (0.1, 0.5), prob, patch_size=patch, dtype='float16')
        assert set(got) == set(ref)
        for key, value in ref.items():
            if torch.is_tensor(value):
                assert got[key].dtype == value.dtype, key
                torch.testing.assert_close(got[key], value, rtol=0, atol=0)
            else:
                assert got[key] == value, key


def test_shapes_order_and_mask_statistics():
    b, n_local, size, patch = 6, 2, 64, 16
    samples = _samples(b, size=size, local=32, n_local=n_local, gram=96)
    collate = partial(FUNCTIONS.get('dino_mm.dino_collate'), mask_ratio_min_max=(0.1, 0.5),
                      mask_probability=0.5, patch_size=patch)
    out = collate(samples)
    n = (size // patch)**2
    assert out['collated_global_crops'].shape == (2 * b, 3, size, size)
    assert out['collated_global_crops'].dtype == torch.float32
    assert out['collated_local_crops'].shape == (n_local * b, 3, 32, 32)
    assert out['collated_gram_teacher_crops'].shape == (2 * b, 3, 96, 96)
    # crop-major: all samples' crop 1 first, then crop 2
    assert torch.equal(out['collated_global_crops'][1], samples[1]['global_crops'][0])
    assert torch.equal(out['collated_global_crops'][b + 1], samples[1]['global_crops'][1])
    assert torch.equal(out['collated_local_crops'][b], samples[0]['local_crops'][1])
    masks = out['collated_masks']
    assert masks.shape == (2 * b, n) and masks.dtype == torch.bool
    n_masked = int(2 * b * 0.5)
    probs = torch.linspace(0.1, 0.5, n_masked + 1)
    assert out['upperbound'] == sum(int(n * probs[i + 1]) for i in range(n_masked))
    per_image = masks.sum(1)
    assert (per_image > 0).sum() <= n_masked
    assert per_image.sum() <= out['upperbound']
    assert out['n_masked_patches'].tolist() == [int(per_image.sum())]
    assert torch.equal(out['mask_indices_list'], masks.flatten().nonzero().flatten())
    # masks_weight sums to 1 for every masked image
    image_of_token = out['mask_indices_list'] // n
    sums = torch.zeros(2 * b).index_add_(0, image_of_token, out['masks_weight'])
    torch.testing.assert_close(sums[per_image > 0], torch.ones(int((per_image > 0).sum())))


def test_mask_counts_within_official_bounds():
    """Each masked image has at most int(N * p_{i+1}) patches of its ratio bin."""
    size, patch, b = 224, 14, 8
    samples = [dict(global_crops=[torch.zeros(3, size, size)] * 2, local_crops=[])
               for _ in range(b)]
    n = (size // patch)**2
    n_masked = int(2 * b * 0.5)
    probs = torch.linspace(0.1, 0.5, n_masked + 1)
    upper = sorted(int(n * probs[i + 1]) for i in range(n_masked))
    for seed in range(5):
        random.seed(seed)
        counts = sorted(dino_collate(samples, patch_size=patch)['collated_masks'].sum(1).tolist())
        assert counts[:b] == [0] * b
        # matched in sorted order, each count is bounded by its bin's upper bound
        assert all(c <= u for c, u in zip(counts[b:], upper))
        assert counts[-1] >= int(n * 0.3)


def test_custom_generator_and_errors():
    gen = MaskingGenerator(4, max_num_patches=8)
    out = dino_collate(_samples(2), mask_generator=gen, patch_size=14)
    assert out['collated_masks'].shape == (4, 16)
    with pytest.raises(KeyError, match='DINOMultiCrop'):
        dino_collate([dict(img=1)])
    with pytest.raises(ValueError, match='dtype'):
        dino_collate(_samples(1), dtype='float17')
