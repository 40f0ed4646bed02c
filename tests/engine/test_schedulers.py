"""CosineSchedule / DINOCosineParamScheduler vs the official CosineScheduler (oracle)."""
import math

import numpy as np
import pytest
import torch
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from dino_mm.engine.schedulers import (CosineSchedule, DINOCosineParamScheduler, scale_lr)

from tests.oracles import require

oracle_utils = require('dinov2.utils.utils')


def _oracle(**kw):
    return oracle_utils.CosineScheduler(**kw)


@pytest.mark.parametrize('kw', [
    dict(base_value=4e-3, final_value=1e-6, total_iters=50, warmup_iters=10),
    dict(base_value=0.04, final_value=0.4, total_iters=37),
    dict(base_value=0.992, final_value=1.0, total_iters=20),
    dict(base_value=0.07, final_value=0.07, total_iters=30, warmup_iters=30,
         start_warmup_value=0.04),
    dict(base_value=1.0, final_value=0.0, total_iters=25, warmup_iters=1, freeze_iters=5),
    dict(base_value=2.0, final_value=0.5, total_iters=9, warmup_iters=2, start_warmup_value=1.),
])
def test_cosine_schedule_matches_official(kw):
    ours, ref = CosineSchedule(**kw), _oracle(**kw)
    values = np.array([ours(i) for i in range(kw['total_iters'] + 5)])
    expected = np.array([ref[i] for i in range(kw['total_iters'] + 5)])
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-15)


def test_cosine_schedule_boundaries_by_hand():
    s = CosineSchedule(1.0, 0.0, total_iters=14, warmup_iters=5)
    # linspace(0, 1, 5) includes the endpoint: the 5th warm-up iteration is the peak.
    assert [s(i) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert s(5) == 1.0  # cosine starts at cos(0)
    assert s(13) == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 9)))
    assert s(14) == 0.0 and s(10**7) == 0.0  # final value beyond the end
    frozen = CosineSchedule(1.0, 0.0, total_iters=14, warmup_iters=5, zero_until=3)
    assert [frozen(i) for i in range(4)] == [0.0, 0.0, 0.0, 0.75]


def test_cosine_schedule_bad_lengths():
    with pytest.raises(ValueError, match='warmup_iters'):
        CosineSchedule(1.0, 0.0, total_iters=4, warmup_iters=5)


def test_scale_lr_rules():
    # vitl16_short: 0.004 * sqrt(2048 / 1024); DINOv3 lin834: 0.001 * 4 * sqrt(2)
    assert scale_lr(0.004, 'sqrt_wrt_1024', 64, world_size=32) == pytest.approx(0.005657, 1e-4)
    assert scale_lr(0.001, 'sqrt_wrt_1024_v3', 64, world_size=32) == pytest.approx(0.005657,
                                                                                  1e-4)
    assert scale_lr(0.1, 'linear_wrt_256', 64, world_size=8) == pytest.approx(0.2)
    assert scale_lr(0.1, None, 64) == 0.1
    assert scale_lr(0.1, 'sqrt_wrt_1024', 256) == pytest.approx(0.05)  # world size 1
    with pytest.raises(ValueError, match='sqrt_wrt_1024'):
        scale_lr(0.1, 'sqrt', 64)


def _groups():
    params = [nn.Parameter(torch.zeros(2)) for _ in range(3)]
    return torch.optim.AdamW([
        dict(params=[params[0]], lr_mult=0.5, wd_mult=1.0, is_last_layer=False),
        dict(params=[params[1]], lr_mult=1.0, wd_mult=0.0, is_last_layer=True),
        dict(params=[params[2]]),  # no multipliers: defaults 1 / 1 / False
    ], lr=1.0, weight_decay=1.0)


def test_param_scheduler_state_dict_is_plain():
    sched = DINOCosineParamScheduler(_groups(), 'lr', 1.0, 0.0, total_iters=10)
    state = sched.state_dict()
    assert 'schedule' not in state and 'last_layer_schedule' not in state
    with pytest.raises(ValueError, match='by_epoch'):
        DINOCosineParamScheduler(_groups(), 'lr', 1.0, 0.0, total_iters=10, by_epoch=True)
    with pytest.raises(ValueError, match='batch_size_per_gpu'):
        DINOCosineParamScheduler(_groups(), 'lr', 1.0, 0.0, 10, scaling_rule='sqrt_wrt_1024')
    with pytest.raises(ValueError, match='param_name'):
        DINOCosineParamScheduler(_groups(), 'momentum', 1.0, 0.0, 10)


class _ToyData(Dataset):

    def __len__(self):
        return 64

    def __getitem__(self, idx):
        return dict(inputs=torch.full((4, ), float(idx)))


class _ToyModel(nn.Module):
    """Named like a DINO algorithm: student.backbone.blocks / student.dino_head.last_layer."""

    def __init__(self):
        super().__init__()
        backbone = nn.Module()
        backbone.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        head = nn.Module()
        head.last_layer = nn.Linear(4, 1, bias=False)
        self.student = nn.ModuleDict(dict(backbone=backbone, dino_head=head))

    def forward(self, inputs, mode='loss'):
        x = inputs
        for blk in self.student.backbone.blocks:
            x = blk(x)
        return dict(loss=self.student.dino_head.last_layer(x).mean())

    def train_step(self, data, optim_wrapper):
        losses = self(data['inputs'])
        optim_wrapper.update_params(losses['loss'])
        return {k: v.detach() for k, v in losses.items()}


def test_param_scheduler_in_runner_matches_official(tmp_path):
    from mmengine.hooks import Hook

    records = []

    class Record(Hook):
        priority = 'LOWEST'

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            groups = runner.optim_wrapper.optimizer.param_groups
            records.append((runner.iter, [g['lr'] for g in groups],
                            [g['weight_decay'] for g in groups],
                            [(g['lr_mult'], g['wd_mult'], g['is_last_layer']) for g in groups]))

    total, warmup, freeze_ll = 12, 4, 3
    runner = Runner(
        model=_ToyModel(),
        work_dir=str(tmp_path),
        train_dataloader=dict(dataset=_ToyData(), batch_size=4,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=total + 2),
        optim_wrapper=dict(
            constructor='dino_mm.LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.5),
            optimizer=dict(type='AdamW', lr=1.0, weight_decay=1.0)),
        param_scheduler=[
            dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr', base_value=0.004,
                 final_value=1e-6, total_iters=total, warmup_iters=warmup,
                 freeze_last_layer_iters=freeze_ll, scaling_rule='sqrt_wrt_1024',
                 batch_size_per_gpu=4),
            dict(type='dino_mm.DINOCosineParamScheduler', param_name='weight_decay',
                 base_value=0.04, final_value=0.4, total_iters=total),
        ],
        custom_hooks=[Record()],
        default_hooks=dict(checkpoint=None, logger=None),
        default_scope='dino_mm',
    )
    runner.train()
    peak = 0.004 * math.sqrt(4 / 1024)
    lr_ref = _oracle(base_value=peak, final_value=1e-6, total_iters=total, warmup_iters=warmup)
    ll_ref = _oracle(base_value=peak, final_value=1e-6, total_iters=total, warmup_iters=warmup)
    ll_ref.schedule[:freeze_ll] = 0  # how the official trainer freezes the last layer
    wd_ref = _oracle(base_value=0.04, final_value=0.4, total_iters=total)
    assert [r[0] for r in records] == list(range(total + 2))
    seen_last = False
    for it, lrs, wds, mults in records:
        for lr, wd, (lr_mult, wd_mult, is_last) in zip(lrs, wds, mults):
            expect_lr = (ll_ref[it] if is_last else lr_ref[it]) * lr_mult
            assert lr == pytest.approx(expect_lr, rel=1e-12, abs=1e-18), (it, is_last)
            assert wd == pytest.approx(wd_ref[it] * wd_mult, rel=1e-12, abs=1e-18)
            seen_last |= is_last
    assert seen_last
    # Hand checks at the boundaries: last warm-up iteration reaches the scaled peak,
    # the last-layer group is 0 for exactly freeze_ll iterations.
    last_idx = [m[2] for m in records[0][3]].index(True)
    assert records[warmup - 1][1][last_idx] == pytest.approx(peak)
    assert [r[1][last_idx] for r in records[:freeze_ll + 1]][:freeze_ll] == [0.0] * freeze_ll
    assert records[freeze_ll][1][last_idx] > 0
    assert records[total][2][last_idx] == pytest.approx(0.4)  # beyond the end: final value
