"""DINOCosineParamScheduler vs explicit optimizer values and negative values (issue 18)."""
import pytest
import torch
from torch import nn

import dino_mm.engine.schedulers as schedulers
from dino_mm.engine.schedulers import DINOCosineParamScheduler


@pytest.fixture
def warnings_logged(monkeypatch):
    logged = []

    def record(msg, logger=None, level=None):
        logged.append(msg)

    monkeypatch.setattr(schedulers, 'print_log', record, raising=False)
    return logged


def _opt(**kw):
    return torch.optim.AdamW(nn.Linear(2, 2).parameters(), **kw)


def test_explicit_optimizer_lr_overridden_is_warned(warnings_logged):
    opt = _opt(lr=1e6, weight_decay=0.04)
    sched = DINOCosineParamScheduler(opt, 'lr', base_value=4e-3, final_value=1e-6,
                                     total_iters=10)
    assert opt.param_groups[0]['lr'] == pytest.approx(sched.schedule(0))
    assert len(warnings_logged) == 1, warnings_logged
    msg = warnings_logged[0]
    assert 'lr=1e+06' in msg and 'optim_wrapper.optimizer.lr' in msg and 'base_value' in msg


def test_explicit_weight_decay_overridden_is_warned(warnings_logged):
    DINOCosineParamScheduler(_opt(lr=4e-3, weight_decay=0.5), 'weight_decay',
                             base_value=0.04, final_value=0.4, total_iters=10)
    assert len(warnings_logged) == 1 and 'weight_decay=0.5' in warnings_logged[0]


def test_consistent_or_default_optimizer_values_are_not_warned(warnings_logged):
    # The shipped configs give the optimizer the (unscaled) base value...
    DINOCosineParamScheduler(_opt(lr=4e-3, weight_decay=0.04), 'lr', base_value=4e-3,
                             final_value=1e-6, total_iters=10, scaling_rule='sqrt_wrt_1024',
                             batch_size_per_gpu=32)
    DINOCosineParamScheduler(_opt(lr=4e-3, weight_decay=0.04), 'weight_decay',
                             base_value=0.04, final_value=0.4, total_iters=10)
    # ... or leave it at the optimizer's own default (not explicitly set).
    DINOCosineParamScheduler(_opt(), 'lr', base_value=4e-3, final_value=1e-6, total_iters=10)
    assert warnings_logged == []


@pytest.mark.parametrize('param_name,field', [('lr', 'base_value'), ('lr', 'final_value'),
                                              ('weight_decay', 'base_value'),
                                              ('weight_decay', 'start_warmup_value')])
def test_negative_values_are_refused(param_name, field):
    kw = dict(base_value=4e-3, final_value=1e-6, total_iters=10, warmup_iters=2)
    kw[field] = -0.1
    with pytest.raises(ValueError) as info:
        DINOCosineParamScheduler(_opt(lr=4e-3), param_name, **kw)
    msg = str(info.value)
    assert f'{field}=-0.1' in msg and param_name in msg and '>= 0' in msg, msg
