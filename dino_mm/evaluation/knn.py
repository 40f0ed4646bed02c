"""Weighted k-NN classification on frozen features (the DINO evaluation protocol,
docs/reference.md §5.2).

Features are L2-normalised, so the dot product is the cosine similarity. For every test
sample the ``k_max = max(ks)`` most similar training samples are found; their weights are
``softmax(sim / T)`` over those ``k_max`` neighbours, and the score of a class for a given
``k`` is the summed weight of the first ``k`` neighbours of that class. The softmax
normaliser is shared by all classes, so predictions equal plain ``exp(sim / T)`` voting.

In a distributed run every rank searches its own slice of the training set and the
per-rank top-k lists are merged, as in the official evaluation; all ranks get the same
answer.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine import dist

from dino_mm.registry import METRICS

from .metrics import TrainFeatureMetric, accuracy_topk


def _local_train_slice(num_train: int) -> slice:
    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = -(-num_train // world)
    return slice(rank * per_rank, min(num_train, (rank + 1) * per_rank))


@torch.no_grad()
def knn_topk(train_features: torch.Tensor,
             train_labels: torch.Tensor,
             test_features: torch.Tensor,
             k: int,
             batch_size: int = 256,
             normalize: bool = True,
             shard_across_ranks: bool = True):
    """Find the ``k`` most cosine-similar training samples of every test sample.

    Args:
        train_features (Tensor): ``(N_train, D)`` features of the whole training set.
        train_labels (Tensor): ``(N_train,)`` class indices.
        test_features (Tensor): ``(N_test, D)``.
        k (int): Number of neighbours (``<= N_train``).
        batch_size (int): Test samples per similarity matmul. Defaults to 256.
        normalize (bool): L2-normalise both feature sets first. Defaults to True.
        shard_across_ranks (bool): In a distributed run, search only this rank's slice
            of the training set and merge the lists over ranks. Defaults to True.

    Returns:
        tuple: ``(similarities, labels)``, both ``(N_test, k)``, sorted by decreasing
        similarity.
    """
    num_train = train_features.shape[0]
    if not 1 <= k <= num_train:
        raise ValueError(f'k={k} neighbours requested but the training set has {num_train} '
                         'samples; lower the largest k')
    if train_labels.shape[0] != num_train:
        raise ValueError(f'{num_train} training features but {train_labels.shape[0]} labels')
    sharded = shard_across_ranks and dist.get_world_size() > 1
    if sharded:
        part = _local_train_slice(num_train)
        train_features, train_labels = train_features[part], train_labels[part]
    if normalize:
        train_features = F.normalize(train_features, dim=1, p=2)
        test_features = F.normalize(test_features, dim=1, p=2)
    train_t = train_features.t()
    device = train_features.device
    out_sims, out_labels = [], []
    for start in range(0, test_features.shape[0], batch_size):
        batch = test_features[start:start + batch_size].to(device)
        sims = batch @ train_t
        local_k = min(k, sims.shape[1])
        top_sims, top_idx = sims.topk(local_k, dim=1, largest=True, sorted=True)
        top_labels = train_labels[top_idx]
        if sharded:
            # Ranks with fewer than k training rows pad with -inf so the merge ignores them.
            pad = k - local_k
            if pad:
                top_sims = F.pad(top_sims, (0, pad), value=float('-inf'))
                top_labels = F.pad(top_labels, (0, pad), value=0)
            top_sims = torch.cat(dist.all_gather(top_sims.contiguous()), dim=1)
            top_labels = torch.cat(dist.all_gather(top_labels.contiguous()), dim=1)
            top_sims, order = top_sims.topk(k, dim=1, largest=True, sorted=True)
            top_labels = top_labels.gather(1, order)
        out_sims.append(top_sims)
        out_labels.append(top_labels)
    return torch.cat(out_sims), torch.cat(out_labels)


@torch.no_grad()
def knn_class_scores(train_features: torch.Tensor,
                     train_labels: torch.Tensor,
                     test_features: torch.Tensor,
                     ks: Sequence[int] = (10, 20, 100, 200),
                     temperature: float = 0.07,
                     num_classes: Optional[int] = None,
                     batch_size: int = 256,
                     normalize: bool = True,
                     shard_across_ranks: bool = True) -> Dict[int, torch.Tensor]:
    """Temperature-weighted k-NN class scores for several ``k`` at once.

    Args:
        train_features (Tensor): ``(N_train, D)``.
        train_labels (Tensor): ``(N_train,)`` class indices in ``[0, num_classes)``.
        test_features (Tensor): ``(N_test, D)``.
        ks (sequence of int): Neighbour counts. Defaults to the official (10, 20, 100, 200).
        temperature (float): Softmax temperature T. Defaults to 0.07.
        num_classes (int, optional): Defaults to ``train_labels.max() + 1``.
        batch_size (int): Test samples per matmul. Defaults to 256.
        normalize (bool): L2-normalise features first. Defaults to True.
        shard_across_ranks (bool): See :func:`knn_topk`. Defaults to True.

    Returns:
        dict: ``{k: (N_test, num_classes) scores}``; each row sums to the weight mass of
        its first k neighbours (1 for ``k = max(ks)``).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f'ks must be positive integers, got {ks}')
    train_labels = train_labels.long()
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f'training labels must be in [0, {num_classes}); got '
                         f'[{int(train_labels.min())}, {int(train_labels.max())}]')
    sims, labels = knn_topk(train_features, train_labels, test_features, ks[-1],
                            batch_size=batch_size, normalize=normalize,
                            shard_across_ranks=shard_across_ranks)
    # At least fp32 for the softmax; float64 features keep float64 (exact comparisons).
    sims = sims.to(torch.promote_types(sims.dtype, torch.float32))
    weights = torch.softmax(sims / temperature, dim=1)
    scores = {}
    for k in ks:
        s = weights.new_zeros(weights.shape[0], num_classes)
        scores[k] = s.scatter_add_(1, labels[:, :k], weights[:, :k])
    return scores


def knn_evaluate(train_features: torch.Tensor,
                 train_labels: torch.Tensor,
                 test_features: torch.Tensor,
                 test_labels: torch.Tensor,
                 ks: Sequence[int] = (10, 20, 100, 200),
                 temperature: float = 0.07,
                 topk: Sequence[int] = (1, 5),
                 num_classes: Optional[int] = None,
                 average: str = 'micro',
                 batch_size: int = 256,
                 shard_across_ranks: bool = True) -> Dict[str, float]:
    """Run :func:`knn_class_scores` and report top-k accuracies (in percent) per ``k``.

    Args:
        train_features, train_labels, test_features: See :func:`knn_class_scores`.
        test_labels (Tensor): ``(N_test,)`` ground truth.
        ks (sequence of int): Neighbour counts. Defaults to (10, 20, 100, 200).
        temperature (float): Softmax temperature. Defaults to 0.07.
        topk (sequence of int): Accuracies to report. Defaults to (1, 5).
        num_classes (int, optional): Defaults to the largest label + 1.
        average (str): ``'micro'`` (plain accuracy, the official "mean accuracy") or
            ``'macro'`` (mean per-class accuracy). Defaults to 'micro'.
        batch_size (int): Test samples per matmul. Defaults to 256.
        shard_across_ranks (bool): See :func:`knn_topk`. Defaults to True.

    Returns:
        dict: ``{'{k}nn_top{t}': accuracy}``.
    """
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_class_scores(train_features, train_labels, test_features, ks, temperature,
                              num_classes, batch_size,
                              shard_across_ranks=shard_across_ranks)
    results = {}
    for k, s in scores.items():
        accs = accuracy_topk(s, test_labels, topk, average=average)
        for t, acc in zip(topk, accs):
            results[f'{k}nn_top{t}'] = acc
    return results


@METRICS.register_module()
class KNNMetric(TrainFeatureMetric):
    """k-NN accuracy of test features against training features set by the loop.

    The test loop (:class:`dino_mm.evaluation.FeatureEvalTestLoop`) extracts the
    training features first and hands them over with :meth:`set_train_features`; this
    metric then collects test features (``feature`` in each prediction) and labels.

    Args:
        ks (sequence of int): Neighbour counts. Defaults to (10, 20, 100, 200).
        temperature (float): Softmax temperature. Defaults to 0.07.
        topk (sequence of int): Reported top-k accuracies. Defaults to (1, 5).
        average (str): 'micro' or 'macro'. Defaults to 'micro'.
        batch_size (int): Test samples per matmul. Defaults to 256.
        collect_device (str): 'cpu' or 'gpu'. Defaults to 'cpu'.
        prefix (str): Metric name prefix. Defaults to 'knn'.
    """
    default_prefix = 'knn'

    def __init__(self,
                 ks: Sequence[int] = (10, 20, 100, 200),
                 temperature: float = 0.07,
                 topk: Sequence[int] = (1, 5),
                 average: str = 'micro',
                 batch_size: int = 256,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ks = tuple(ks)
        self.temperature = temperature
        self.topk = tuple(topk)
        self.average = average
        self.batch_size = batch_size


    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Run k-NN against the training features (rank 0 only, after collection)."""
        test_features, test_labels = self.stacked_results(results)
        # compute_metrics runs on rank 0 alone, so the search must not shard over ranks.
        return knn_evaluate(self.train_features, self.train_labels, test_features,
                            test_labels, self.ks, self.temperature, self.topk,
                            average=self.average, batch_size=self.batch_size,
                            shard_across_ranks=False)


__all__ = ['knn_topk', 'knn_class_scores', 'knn_evaluate', 'KNNMetric']
