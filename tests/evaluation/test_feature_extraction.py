"""Feature extraction: ordering, de-duplication, caching, and 2-rank gloo parity."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.model import ImgDataPreprocessor
from torch import nn
from torch.utils.data import DataLoader

from dino_mm.evaluation.feature_extraction import extract_features
from dino_mm.evaluation.loops import FrozenFeatureModel

N = 37  # not divisible by the world size (2) nor by the batch size (4)


def _model():
    from .conftest import tiny_vit
    return FrozenFeatureModel(tiny_vit(depth=2),
                              data_preprocessor=ImgDataPreprocessor(mean=[127.5] * 3,
                                                                    std=[127.5] * 3))


def _loader(dataset, shuffle=False, world=None, rank=None, **kw):
    sampler = DefaultSampler(dataset, shuffle=shuffle, seed=0)
    if world is not None:
        sampler.world_size, sampler.rank = world, rank
        sampler.num_samples = -(-len(dataset) // world)
        sampler.total_size = sampler.num_samples * world
    return DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=pseudo_collate, **kw)


def _dataset(with_index=True):
    from .conftest import DigitsDataset, digits_images
    images, labels = digits_images(28)
    return DigitsDataset(images[:N], labels[:N], with_index=with_index)


def _worker(rank, world, port, out_file, shuffle):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        feats, labels = extract_features(_model(), _loader(_dataset(), shuffle=shuffle),
                                         progress=False)
        if rank == 0:
            torch.save(dict(feats=feats, labels=labels), out_file)
    finally:
        torch.distributed.destroy_process_group()


def test_single_process_order_and_values():
    model, ds = _model(), _dataset()
    feats, labels = extract_features(model, _loader(ds), progress=False)
    assert feats.shape == (N, 32) and feats.dtype == torch.float32
    assert torch.equal(labels, ds.labels)
    # Each row is the model's feature of exactly that dataset item.
    for i in (0, 17, N - 1):
        one = model.data_preprocessor(pseudo_collate([ds[i]]), False)['inputs']
        torch.testing.assert_close(feats[i], model.extract_feat(one)[0], atol=1e-5, rtol=0)
    # A shuffled sampler still yields dataset order (indices come from sample_idx).
    shuffled, _ = extract_features(model, _loader(ds, shuffle=True), progress=False)
    torch.testing.assert_close(shuffled, feats, atol=1e-5, rtol=0)


def test_padded_shards_are_deduplicated():
    """Simulate rank 1 of 2 (padded DefaultSampler) run alone: rows it never saw must
    raise, and the padded duplicate index must not."""
    ds = _dataset()
    with pytest.raises(RuntimeError, match='never seen'):
        extract_features(_model(), _loader(ds, world=2, rank=1), progress=False)


def test_plain_tuple_batches_use_sampler_order():
    from .conftest import digits_images
    images, labels = digits_images(28)
    ds = torch.utils.data.TensorDataset(images[:N] * 2 - 1, labels[:N])
    model = _model().backbone
    feats, got = extract_features(model, DataLoader(ds, batch_size=5), progress=False)
    assert torch.equal(got, labels[:N])
    with torch.no_grad():
        torch.testing.assert_close(feats, model(images[:N] * 2 - 1), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match='random or unknown sampler'):
        extract_features(model, DataLoader(ds, batch_size=5, shuffle=True), progress=False)
    with pytest.raises(RuntimeError, match='never seen'):
        extract_features(model, DataLoader(ds, batch_size=5, drop_last=True), progress=False)


def test_cache_is_written_and_reused(tmp_path):
    model, ds = _model(), _dataset()
    feats, labels = extract_features(model, _loader(ds), cache_dir=str(tmp_path),
                                     cache_name='digits', shard_size=10, progress=False)
    files = sorted(os.listdir(tmp_path / 'digits'))
    assert files == ['features_00000.npy', 'features_00001.npy', 'features_00002.npy',
                     'features_00003.npy', 'labels.npy', 'meta.json']

    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError('the cache should have been used')

    cached, cached_labels = extract_features(Exploding(), _loader(ds), progress=False,
                                             cache_dir=str(tmp_path), cache_name='digits')
    assert torch.equal(cached, feats) and torch.equal(cached_labels, labels)
    small = _dataset()
    small.labels = small.labels[:10]
    with pytest.raises(ValueError, match='holds 37 samples but the dataset has 10'):
        extract_features(model, _loader(small), cache_dir=str(tmp_path), cache_name='digits')
    with pytest.raises(ValueError, match='cache_name'):
        extract_features(model, _loader(ds), cache_dir=str(tmp_path))


@pytest.mark.dist
@pytest.mark.parametrize('shuffle', [True])
def test_two_ranks_gloo_match_single_process(tmp_path, shuffle):
    single, single_labels = extract_features(_model(), _loader(_dataset()), progress=False)
    out_file = str(tmp_path / 'dist.pt')
    port = 29500 + os.getpid() % 1000 + int(shuffle)
    mp.spawn(_worker, args=(2, port, out_file, shuffle), nprocs=2, join=True)
    got = torch.load(out_file)
    assert got['feats'].shape == (N, 32)
    assert torch.equal(got['labels'], single_labels)
    torch.testing.assert_close(got['feats'], single, atol=1e-5, rtol=0)
