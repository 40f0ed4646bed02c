"""Pieces shared by the k-NN, linear and logistic-regression evaluators."""
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.evaluator import BaseMetric

from .feature_extraction import parse_data_samples


class TrainFeatureMetric(BaseMetric):
    """Base of metrics that compare test features with reference (training) features.

    :class:`~dino_mm.evaluation.FeatureEvalTestLoop` extracts the training features once
    and hands them over with :meth:`set_train_features`; :meth:`process` keeps each test
    sample's ``feature`` and label; subclasses compute on :meth:`stacked_results`.
    """

    train_features: Optional[torch.Tensor] = None
    train_labels: Optional[torch.Tensor] = None

    def set_train_features(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Give the metric the reference (training) features and labels."""
        self.train_features, self.train_labels = features, labels

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Store each prediction's ``feature`` and ``gt_label``."""
        labels, _ = parse_data_samples(data_samples)
        for sample, label in zip(data_samples, labels):
            feature = sample['feature'] if isinstance(sample, dict) else sample.feature
            self.results.append(dict(feature=feature.detach().float().cpu(), label=int(label)))

    def stacked_results(self, results: List[dict]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Test features and labels, after checking that training features were given."""
        if self.train_features is None:
            raise RuntimeError(f'{type(self).__name__} has no training features: run it with '
                               "test_cfg=dict(type='dino_mm.FeatureEvalTestLoop', ...) or call "
                               'set_train_features() first')
        return (torch.stack([r['feature'] for r in results]),
                torch.tensor([r['label'] for r in results]))


def accuracy_topk(scores: torch.Tensor,
                  labels: torch.Tensor,
                  topk: Sequence[int] = (1, 5),
                  average: str = 'micro') -> List[float]:
    """Top-k accuracies in percent.

    Args:
        scores (Tensor): ``(N, C)`` class scores (logits, probabilities or votes).
        labels (Tensor): ``(N,)`` ground-truth class indices.
        topk (sequence of int): The k values; a k larger than C counts every sample as
            correct, as a top-C prediction always contains the label. Defaults to (1, 5).
        average (str): ``'micro'`` = fraction of correct samples (the official
            "mean accuracy"); ``'macro'`` = mean over the classes present in ``labels`` of
            their per-class accuracy. Defaults to 'micro'.

    Returns:
        list[float]: One accuracy per k, in percent.
    """
    if average not in ('micro', 'macro'):
        raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f'scores of shape {tuple(scores.shape)} do not match '
                         f'{labels.shape[0]} labels')
    labels = labels.to(scores.device).long()
    max_k = min(max(topk), scores.shape[1])
    pred = scores.topk(max_k, dim=1, largest=True, sorted=True).indices
    hits = pred.eq(labels[:, None])
    out = []
    for k in topk:
        correct = hits[:, :min(k, max_k)].any(dim=1).float()
        if average == 'micro':
            out.append(correct.mean().item() * 100.0)
        else:
            classes = labels.unique()
            per_class = torch.stack([correct[labels == c].mean() for c in classes])
            out.append(per_class.mean().item() * 100.0)
    return out


__all__ = ['accuracy_topk']
