"""Top-k accuracies shared by the k-NN, linear and logistic-regression evaluators."""
from typing import List, Sequence

import torch


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
