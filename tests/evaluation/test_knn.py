"""k-NN protocol vs scikit-learn's KNeighborsClassifier on real digits."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from dino_mm.evaluation.knn import KNNMetric, knn_class_scores, knn_evaluate, knn_topk
from dino_mm.evaluation.metrics import accuracy_topk

T = 0.07
KS = (10, 20, 100, 200)


def _features(kind, digits):
    from .conftest import tiny_vit
    images, labels = digits
    if kind == 'pixels':
        feats = images.flatten(1)
    else:
        with torch.no_grad():
            feats = tiny_vit()(images)
    # float64 so that near-ties of cosine similarity resolve like scikit-learn's float64.
    return feats.double(), labels


@pytest.mark.parametrize('kind', ['pixels', 'tiny_vit'])
def test_knn_matches_sklearn(kind, digits):
    feats, labels = _features(kind, digits)
    train_x, train_y, test_x, test_y = feats[:1200], labels[:1200], feats[1200:], labels[1200:]
    scores = knn_class_scores(train_x, train_y, test_x, KS, T, num_classes=10, batch_size=100)
    for k in KS:
        ref = KNeighborsClassifier(n_neighbors=k, metric='cosine', algorithm='brute',
                                   weights=lambda d: np.exp((1.0 - d) / T))
        ref.fit(train_x.numpy(), train_y.numpy())
        ref_pred = ref.predict(test_x.numpy())
        pred = scores[k].argmax(1).numpy()
        assert (pred == ref_pred).all(), f'k={k}: {(pred != ref_pred).sum()} predictions differ'
        # Class probabilities agree too once our scores are renormalised over the k votes.
        prob = scores[k] / scores[k].sum(1, keepdim=True)
        np.testing.assert_allclose(prob.numpy(), ref.predict_proba(test_x.numpy()), atol=1e-9)
    # Real signal: digits are easy for k-NN on pixels; the random ViT is far above chance.
    acc = accuracy_topk(scores[20], test_y, (1, ))[0]
    assert acc > (90.0 if kind == 'pixels' else 30.0)


def test_knn_scores_are_softmax_weights_over_kmax(digits):
    feats, labels = _features('pixels', digits)
    scores = knn_class_scores(feats[:300], labels[:300], feats[300:310], (5, 50), T)
    # The weights are normalised over k_max = 50 neighbours: the k_max row sums to 1,
    # the k = 5 row to less.
    assert torch.allclose(scores[50].sum(1), torch.ones(10, dtype=scores[50].dtype))
    assert (scores[5].sum(1) < 1).all()


def test_knn_topk_and_metric(digits):
    feats, labels = _features('pixels', digits)
    sims, nn_labels = knn_topk(feats[:500], labels[:500], feats[500:520], 3)
    assert sims.shape == (20, 3) and (sims[:, :-1] >= sims[:, 1:]).all()
    metric = KNNMetric(ks=(10, 20), topk=(1, 5))
    metric.set_train_features(feats[:1200].float(), labels[:1200])
    metric.process({}, [dict(feature=f, gt_label=torch.tensor([int(y)]))
                        for f, y in zip(feats[1200:], labels[1200:])])
    out = metric.evaluate(len(metric.results))
    ref = knn_evaluate(feats[:1200].float(), labels[:1200], feats[1200:].float(),
                       labels[1200:], ks=(10, 20))
    assert out['knn/10nn_top1'] == pytest.approx(ref['10nn_top1'])
    assert out['knn/20nn_top5'] >= out['knn/20nn_top1'] > 90


def test_knn_rejects_bad_input(digits):
    feats, labels = _features('pixels', digits)
    with pytest.raises(ValueError, match='training set has 5'):
        knn_class_scores(feats[:5], labels[:5], feats[5:7], ks=(10, ))
    with pytest.raises(ValueError, match='labels must be in'):
        knn_class_scores(feats[:50], labels[:50] - 1, feats[50:52], ks=(3, ), num_classes=10)
    with pytest.raises(RuntimeError, match='no training features'):
        KNNMetric().compute_metrics([dict(feature=feats[0], label=0)])
