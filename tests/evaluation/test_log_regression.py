"""Logistic-regression protocol vs a direct scikit-learn sweep on real digits."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dino_mm.evaluation.log_regression import (OFFICIAL_C_GRID, LogisticRegressionMetric,
                                               eval_log_regression)

CS = (1e-4, 1e-2, 1.0)


def test_official_grid():
    assert len(OFFICIAL_C_GRID) == 45
    assert OFFICIAL_C_GRID[0] == pytest.approx(1e-6) and OFFICIAL_C_GRID[-1] == pytest.approx(1e5)
    assert np.allclose(np.diff(np.log10(OFFICIAL_C_GRID)), 11 / 44)


def test_select_on_val_matches_sklearn_sweep():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    xtr, ytr, xva, yva = x[:500], y[:500], x[500:800], y[500:800]
    out = eval_log_regression(torch.from_numpy(xtr).float(), torch.from_numpy(ytr),
                              torch.from_numpy(xva).float(), torch.from_numpy(yva), Cs=CS,
                              max_iter=100, select_on='val', backend='sklearn')
    # Independent sweep: plain sklearn on float64 features, default multinomial L-BFGS.
    ref = {}
    for c in CS:
        clf = LogisticRegression(C=c, max_iter=100, tol=1e-12).fit(xtr, ytr)
        ref[c] = (clf.predict(xva) == yva).mean() * 100
    best = max(CS, key=lambda c: ref[c])
    assert out['best_C'] == best
    # Features went through float32, so a prediction may flip: tolerance 0.34 points (one sample of 300).
    assert out['top1'] == pytest.approx(ref[best], abs=0.34)
    for c in CS:
        assert out[f'sweep/C_{c:.3g}_top1'] == pytest.approx(ref[c], abs=0.34)
    assert out['top1'] > 80 and out['top5'] >= out['top1']


def test_holdout_selection_and_metric(digits):
    from .conftest import tiny_vit
    images, labels = digits
    with torch.no_grad():
        feats = tiny_vit()(images[:600])
    labels = labels[:600]
    metric = LogisticRegressionMetric(Cs=CS, max_iter=100, backend='sklearn', log_sweep=True)
    metric.set_train_features(feats[:400], labels[:400])
    metric.process({}, [dict(feature=f, gt_label=torch.tensor([int(t)]))
                        for f, t in zip(feats[400:], labels[400:])])
    out = metric.evaluate(200)
    # Refit on the whole training set with the chosen C, then scored on the val set.
    c = out['logreg/best_C']
    clf = LogisticRegression(C=c, max_iter=100, tol=1e-12).fit(feats[:400].double().numpy(),
                                                              labels[:400].numpy())
    ref = (clf.predict(feats[400:].double().numpy()) == labels[400:].numpy()).mean() * 100
    assert out['logreg/top1'] == pytest.approx(ref, abs=1e-4)
    assert out['logreg/top1'] > 30  # random tiny ViT, 10 classes: far above chance


def test_bad_arguments():
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    with pytest.raises(ValueError, match='select_on'):
        eval_log_regression(x, y, x, y, Cs=CS, select_on='test')
    with pytest.raises(ValueError, match='backend'):
        eval_log_regression(x, y, x, y, Cs=CS, backend='gpu')
