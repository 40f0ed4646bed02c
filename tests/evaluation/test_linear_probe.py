"""Linear-probe grid: one backbone pass per step, and parity with a lone classifier."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.optim import OptimWrapper

from dino_mm.evaluation.linear_probe import (OFFICIAL_LEARNING_RATES, LinearClassifier,
                                             LinearProbeGrid,
                                             LinearProbeOptimWrapperConstructor,
                                             LinearProbeMetric, classifier_name)
from dino_mm.models.heads.linear import create_linear_input

STEPS = 12


def _grid(lrs=(1e-3, 0.1, 1.0), batch=16):
    from .conftest import tiny_vit
    # fp32: the grid is compared with a lone classifier on fp32 features.
    model = LinearProbeGrid(tiny_vit(), num_classes=10, learning_rates=lrs,
                            batch_size_per_gpu=batch, precision='fp32',
                            data_preprocessor=dict(type='ImgDataPreprocessor',
                                                   mean=[127.5] * 3, std=[127.5] * 3))
    return model


def test_official_names_and_grid():
    assert len(OFFICIAL_LEARNING_RATES) == 13
    assert classifier_name(4, True, 5e-4) == 'classifier_4_blocks_avgpool_True_lr_0_00050'
    model = _grid(lrs=OFFICIAL_LEARNING_RATES, batch=1024)
    assert len(model.classifiers) == 52
    # lr scaled by 1024 * 1 / 256 = 4 (and the name carries the scaled lr, as upstream).
    assert model.learning_rates['classifier_1_blocks_avgpool_False_lr_0_40000'] == 0.4
    clf = model.classifiers['classifier_4_blocks_avgpool_True_lr_0_02000']
    assert clf.linear.in_features == 5 * 32
    assert float(clf.linear.bias.abs().sum()) == 0
    assert 0.008 < float(clf.linear.weight.std()) < 0.012
    # Batch 128 on one rank scales 1e-5 / 2e-5 to 5e-6 / 1e-5: names get more decimals.
    names = list(_grid(lrs=OFFICIAL_LEARNING_RATES, batch=128).classifiers)
    assert len(set(names)) == 52 and 'classifier_1_blocks_avgpool_False_lr_0_000005' in names


def test_grid_trains_in_one_pass_and_best_equals_lone_classifier(digits):
    from .conftest import DigitsDataset
    images, labels = digits
    ds = DigitsDataset(images[:STEPS * 16], labels[:STEPS * 16])
    batches = [pseudo_collate([ds[i] for i in range(s * 16, (s + 1) * 16)])
               for s in range(STEPS)]
    model = _grid()
    init = {n: {k: v.clone() for k, v in c.state_dict().items()}
            for n, c in model.classifiers.items()}
    calls = []
    gil = model.backbone.get_intermediate_layers
    model.backbone.get_intermediate_layers = lambda *a, **k: calls.append(1) or gil(*a, **k)
    ctor = LinearProbeOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=1.0, momentum=0.9, weight_decay=0)))
    optim = ctor(model)
    # (mmengine appends one parameter-less group that tracks the base lr for logging.)
    groups = optim.param_groups[:len(model.classifiers)]
    assert [g['lr'] for g in groups] == list(model.learning_rates.values())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim.optimizer, STEPS, eta_min=0)
    model.train()
    assert not model.backbone.training
    for batch in batches:
        model.train_step(batch, optim)
        sched.step()
    assert len(calls) == STEPS  # one backbone pass per step for all 12 classifiers

    metric = LinearProbeMetric()
    model.eval()
    for batch in batches:
        metric.process(batch, model.test_step(batch))
    out = metric.evaluate(len(ds))
    names = list(model.classifiers)
    best = names[int(out['linear/best_index'])]
    assert out['linear/top1'] == max(out[f'linear/{n}_top1'] for n in names)

    # The best classifier trained alone, same init, lr, schedule and data order.
    clf = model.classifiers[best]
    lone = LinearClassifier(clf.linear.in_features, clf.use_n_blocks, clf.use_avgpool, 10)
    lone.load_state_dict(init[best])
    opt = torch.optim.SGD(lone.parameters(), lr=model.learning_rates[best], momentum=0.9,
                          weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS, eta_min=0)
    for batch in batches:
        data = model.data_preprocessor(batch, True)
        y = torch.cat([s.gt_label for s in data['data_samples']])
        with torch.no_grad():
            feats = model.backbone.get_intermediate_layers(data['inputs'], n=4,
                                                           return_class_token=True)
        opt.zero_grad()
        F.cross_entropy(lone(feats), y).backward()
        opt.step()
        sched.step()
    for key, value in lone.state_dict().items():
        torch.testing.assert_close(clf.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_create_linear_input_layout():
    toks = [(torch.full((2, 3, 4), float(i)), torch.full((2, 4), 10.0 + i)) for i in range(4)]
    out = create_linear_input(toks, 2, True)
    assert out.shape == (2, 12)
    assert out[0].tolist() == [12.0] * 4 + [13.0] * 4 + [3.0] * 4
    with pytest.raises(ValueError, match='use_n_blocks=5'):
        create_linear_input(toks, 5, False)
