"""Feature extraction shared by the kNN, logistic-regression and linear evaluators.

Every rank runs the model on its shard of the data loader; the shards are gathered and
written into one ``(N, D)`` array ordered by dataset index. MMEngine's ``DefaultSampler``
pads the index list so that every rank gets the same number of samples, so some samples
arrive twice: they are de-duplicated by their dataset index (which also makes the
result independent of the sampler's interleaving).

Batches may come in three forms:

* MMEngine / mm* style ``dict(inputs=..., data_samples=[...])``, with labels in
  ``data_sample.gt_label`` and the dataset index in ``data_sample.metainfo['sample_idx']``
  (set by ``mmengine.dataset.BaseDataset``);
* a ``(images, labels)`` or ``(images, labels, indices)`` tuple (torchvision style);
* anything else when the model is an MMEngine model with ``data_preprocessor`` and
  ``extract_feat``.

When a batch carries no index, the order of the loader's batch sampler is used, which
requires a deterministic sampler.
"""
import contextlib
import functools
import json
import os
import os.path as osp
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine import dist
from mmengine.model import is_model_wrapper
from mmengine.utils import ProgressBar
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from dino_mm.utils.precision import precision_autocast

ForwardFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

_META_FILE = 'meta.json'
_LABELS_FILE = 'labels.npy'


def _shard_file(i: int) -> str:
    return f'features_{i:05d}.npy'


def _sample_label(sample: Any) -> Optional[int]:
    if isinstance(sample, dict):
        label = sample.get('gt_label', sample.get('label'))
    elif isinstance(sample, (int, np.integer)):
        return int(sample)
    elif torch.is_tensor(sample) and sample.numel() == 1:
        return int(sample)
    else:
        label = getattr(sample, 'gt_label', None)
    if label is None:
        return None
    if torch.is_tensor(label) or isinstance(label, np.ndarray):
        numel = label.size if isinstance(label, np.ndarray) else label.numel()
        if numel != 1:
            raise ValueError(f'expected one class label per sample, got gt_label of shape '
                             f'{tuple(label.shape)}; multi-label data is not supported')
        return int(label.reshape(-1)[0])
    return int(label)


def _sample_index(sample: Any) -> Optional[int]:
    if isinstance(sample, dict):
        idx = sample.get('sample_idx')
    else:
        metainfo = getattr(sample, 'metainfo', None)
        idx = metainfo.get('sample_idx') if isinstance(metainfo, dict) else None
    return None if idx is None else int(idx)


def parse_data_samples(data_samples: Sequence[Any]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Read class labels and dataset indices from a list of data samples.

    Args:
        data_samples (sequence): mm* data elements (``gt_label`` attribute,
            ``metainfo['sample_idx']``), dicts with the same keys, or plain ints.

    Returns:
        tuple: ``labels`` (LongTensor, -1 where a sample has none) and ``indices``
        (LongTensor) or None when any sample lacks a dataset index.
    """
    labels, indices = [], []
    for sample in data_samples:
        label = _sample_label(sample)
        labels.append(-1 if label is None else label)
        indices.append(_sample_index(sample))
    idx = None if any(i is None for i in indices) else torch.tensor(indices, dtype=torch.long)
    return torch.tensor(labels, dtype=torch.long), idx


def _forward_batch(model: nn.Module, batch: Any, device: torch.device,
                   forward_fn: Optional[ForwardFn]
                   ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Run one batch; return features, labels and dataset indices (or None)."""
    module = model.module if is_model_wrapper(model) else model
    if hasattr(module, 'data_preprocessor') and hasattr(module, 'extract_feat') \
            and not isinstance(batch, (tuple, list)):
        data = module.data_preprocessor(batch, False)
        feats = (forward_fn(module, data['inputs']) if forward_fn is not None
                 else module.extract_feat(data['inputs']))
        labels, indices = parse_data_samples(data.get('data_samples') or [])
        return feats, labels, indices
    if isinstance(batch, (tuple, list)):
        if len(batch) not in (2, 3):
            raise ValueError('tuple batches must be (images, labels) or (images, labels, '
                             f'indices); got a tuple of length {len(batch)}')
        images = batch[0]
        labels = torch.as_tensor(batch[1]).long().reshape(-1)
        indices = torch.as_tensor(batch[2]).long().reshape(-1) if len(batch) == 3 else None
    elif isinstance(batch, dict) and 'inputs' in batch:
        images = batch['inputs']
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        labels, indices = parse_data_samples(batch.get('data_samples') or [])
    else:
        raise TypeError(f'cannot read a batch of type {type(batch).__name__}: expected '
                        "dict(inputs=..., data_samples=...) or (images, labels[, indices])")
    images = images.to(device, non_blocking=True)
    if not images.is_floating_point():
        raise TypeError('the batch holds integer images and the model has no '
                        'data_preprocessor; normalise them in the dataset transform or '
                        'use an MMEngine model with a data_preprocessor')
    feats = forward_fn(model, images) if forward_fn is not None else model(images)
    return feats, labels, indices


def _sampler_order(data_loader: DataLoader) -> Optional[Iterator[List[int]]]:
    batch_sampler = getattr(data_loader, 'batch_sampler', None)
    if batch_sampler is None:
        return None
    sampler = getattr(batch_sampler, 'sampler', None)
    if isinstance(sampler, RandomSampler):
        return None
    return iter(batch_sampler)


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather rows of per-rank tensors of different lengths (concatenated by rank)."""
    if dist.get_world_size() == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], dtype=torch.long)
    counts = [int(c) for c in dist.all_gather(count)]
    padded = tensor.new_zeros((max(counts), ) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = dist.all_gather(padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)


def _cache_path(cache_dir: Optional[str], cache_name: Optional[str]) -> Optional[str]:
    if cache_dir is None:
        return None
    if not cache_name:
        raise ValueError('cache_dir is set but cache_name is empty: give each feature set a '
                         'name (e.g. "dinov2_vits14_in1k_train") so caches do not collide')
    return osp.join(cache_dir, cache_name)


def load_cached_features(path: str, num_samples: Optional[int] = None
                         ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Load features written by :func:`save_cached_features`, or None when absent.

    Args:
        path (str): Cache folder (``cache_dir/cache_name``).
        num_samples (int, optional): Expected number of samples; a cache of another
            size raises instead of being silently reused.

    Returns:
        tuple or None: ``(features, labels)``.
    """
    meta_file = osp.join(path, _META_FILE)
    if not osp.isfile(meta_file):
        return None
    with open(meta_file) as f:
        meta = json.load(f)
    if num_samples is not None and meta['num_samples'] != num_samples:
        raise ValueError(f'feature cache {path} holds {meta["num_samples"]} samples but the '
                         f'dataset has {num_samples}; delete the folder or use another '
                         'cache_name')
    shards = [np.load(osp.join(path, _shard_file(i))) for i in range(meta['num_shards'])]
    features = torch.from_numpy(np.concatenate(shards, axis=0))
    labels = torch.from_numpy(np.load(osp.join(path, _LABELS_FILE)))
    return features, labels


def save_cached_features(path: str, features: torch.Tensor, labels: torch.Tensor,
                         shard_size: int = 65536) -> None:
    """Write features as ``.npy`` shards of ``shard_size`` rows plus labels and a meta file.

    The meta file is written last, so an interrupted run leaves no usable cache.
    """
    os.makedirs(path, exist_ok=True)
    feats = features.cpu().numpy()
    num_shards = max(1, -(-feats.shape[0] // shard_size))
    for i in range(num_shards):
        np.save(osp.join(path, _shard_file(i)), feats[i * shard_size:(i + 1) * shard_size])
    np.save(osp.join(path, _LABELS_FILE), labels.cpu().numpy())
    meta = dict(num_samples=int(feats.shape[0]), dim=int(feats.shape[1]),
                num_shards=num_shards, shard_size=shard_size, dtype=str(feats.dtype))
    from dino_mm.engine.checkpoint import atomic_write

    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(meta, f)
    atomic_write(osp.join(path, _META_FILE), dump)


@torch.no_grad()
def extract_features(model: nn.Module,
                     data_loader: DataLoader,
                     *,
                     forward_fn: Optional[ForwardFn] = None,
                     device: Optional[torch.device] = None,
                     precision: Optional[str] = None,
                     cache_dir: Optional[str] = None,
                     cache_name: Optional[str] = None,
                     shard_size: int = 65536,
                     progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Extract one feature vector per dataset sample, on one or many ranks.

    Args:
        model (nn.Module): A plain module mapping images to ``(B, D)`` features, or an
            MMEngine model with ``data_preprocessor`` and ``extract_feat``.
        data_loader (DataLoader): Loader over this rank's shard (``DefaultSampler`` or
            ``DistributedSampler`` in distributed runs). Its ``dataset`` length defines N.
        forward_fn (callable, optional): ``forward_fn(model, images) -> (B, D)`` used
            instead of ``model(images)`` / ``model.extract_feat(images)``.
        device (torch.device, optional): Where images go. Defaults to the model's device.
        precision (str, optional): Run the forward in this precision: ``'auto'`` (bf16
            on a CPU with native bf16 and on CUDA, else fp32), ``'fp32'``, ``'bf16'`` or
            ``'fp16'`` (CUDA), see :mod:`dino_mm.utils.precision`; the features are
            stored as fp32 either way. None adds no autocast region, leaving the choice
            to the model (e.g. :class:`~dino_mm.evaluation.FrozenFeatureModel`'s own
            ``precision``) and any surrounding autocast. Defaults to None.
        cache_dir (str, optional): When set, features are saved under
            ``cache_dir/cache_name`` and loaded from there on later calls.
        cache_name (str, optional): Name of this feature set inside ``cache_dir``.
        shard_size (int): Rows per cached ``.npy`` shard. Defaults to 65536.
        progress (bool): Show a progress bar with ETA on rank 0. Defaults to True.

    Returns:
        tuple: ``features`` (float32, ``(N, D)``, on CPU, ordered by dataset index) and
        ``labels`` (int64, ``(N,)``, -1 for unlabelled samples); identical on all ranks.
    """
    num_samples = len(data_loader.dataset)
    path = _cache_path(cache_dir, cache_name)
    if path is not None:
        cached = load_cached_features(path, num_samples)
        if cached is not None:
            return cached

    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device('cpu')
    order = _sampler_order(data_loader)
    pbar = ProgressBar(len(data_loader)) if progress and dist.is_main_process() else None
    feats_list, labels_list, index_list = [], [], []
    region = (contextlib.nullcontext if precision is None else functools.partial(
        precision_autocast, precision, device, owner='extract_features'))
    for batch in data_loader:
        with region():
            feats, labels, indices = _forward_batch(model, batch, device, forward_fn)
        sampler_indices = next(order, None) if order is not None else None
        if indices is None:
            if sampler_indices is None:
                raise RuntimeError(
                    'the batches carry no dataset index (data_sample.metainfo["sample_idx"] '
                    'or a third tuple element) and the loader uses a random or unknown '
                    'sampler; use a deterministic sampler (DefaultSampler(shuffle=False))')
            indices = torch.as_tensor(sampler_indices, dtype=torch.long)
        if feats.ndim != 2 or feats.shape[0] != indices.shape[0]:
            raise ValueError(f'the model returned features of shape {tuple(feats.shape)} for '
                             f'a batch of {indices.shape[0]} samples; expected (B, D)')
        feats_list.append(feats.float().cpu())
        labels_list.append(labels.cpu())
        index_list.append(indices.cpu())
        if pbar is not None:
            pbar.update()
    if pbar is not None:
        pbar.file.write('\n')

    if feats_list:
        local_feats = torch.cat(feats_list)
        local_labels, local_index = torch.cat(labels_list), torch.cat(index_list)
    else:  # a rank with an empty shard still has to join the collectives
        local_feats, local_labels = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        local_index = torch.zeros(0, dtype=torch.long)
    dim = torch.tensor([local_feats.shape[1]], dtype=torch.long)
    dim = int(max(int(d) for d in dist.all_gather(dim)))
    if local_feats.shape[0] == 0:
        local_feats = torch.zeros(0, dim)
    all_feats = _gather_rows(local_feats)
    all_labels = _gather_rows(local_labels)
    all_index = _gather_rows(local_index)

    if all_index.numel() and (all_index.min() < 0 or all_index.max() >= num_samples):
        raise IndexError(f'dataset indices must lie in [0, {num_samples}); got '
                         f'[{int(all_index.min())}, {int(all_index.max())}]')
    features = torch.zeros(num_samples, dim, dtype=torch.float32)
    labels = torch.full((num_samples, ), -1, dtype=torch.long)
    seen = torch.zeros(num_samples, dtype=torch.bool)
    # Padded duplicates write the same values twice, so the last write wins harmlessly.
    features[all_index] = all_feats
    labels[all_index] = all_labels
    seen[all_index] = True
    if not bool(seen.all()):
        missing = (~seen).nonzero().flatten()
        raise RuntimeError(f'{missing.numel()} of {num_samples} samples were never seen (first '
                           f'missing index {int(missing[0])}); the loader must not drop the '
                           'last batch (drop_last=False) and must cover the whole dataset')

    if path is not None:
        if dist.is_main_process():
            save_cached_features(path, features, labels, shard_size)
        dist.barrier()
    return features, labels


__all__ = ['extract_features', 'load_cached_features', 'save_cached_features',
           'parse_data_samples']
