"""Schedules follow the run: batch size, length, world size, and DINOv3's v2 schedules.

* ``--cfg-options train_dataloader.batch_size=8`` must change the scaled lr (the config
  computed ``batch_size_per_gpu`` when it was parsed);
* ``--cfg-options train_cfg.max_iters=N`` must shrink warm-ups / cosines with the run;
* a run resumed on another world size trains its first iteration at the new scaled lr;
* the DINOv3 ``schedules:`` block (v2) scales peak *and* end, so the 7B recipe's lr stays
  constant after the warm-up instead of decaying to the unscaled value.
"""
import json
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from torch import nn

from dino_mm.engine import schedulers
from dino_mm.engine.schedulers import (DINOCosineParamScheduler, fit_schedules_to_run,
                                       linear_warmup_cosine_decay, scale_lr)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs', 'demo', 'dinov2_vit-tiny_digits.py')


def _optimizer(n_groups=2):
    params = [nn.Parameter(torch.zeros(2)) for _ in range(n_groups)]
    return torch.optim.AdamW([dict(params=[p]) for p in params], lr=1.0, weight_decay=0.0)


# ------------------------------------------------------------------- config adjustments
def test_fit_schedules_follows_batch_size_and_max_iters():
    cfg = Config.fromfile(DEMO)
    declared = cfg.train_cfg.max_iters
    assert declared == 1000
    cfg.merge_from_dict({'train_dataloader.batch_size': 8, 'train_cfg.max_iters': 40})
    changes = fit_schedules_to_run(cfg, declared)
    lr, wd = cfg.param_scheduler
    assert lr.batch_size_per_gpu == 8
    assert (lr.total_iters, lr.warmup_iters, lr.freeze_last_layer_iters) == (40, 4, 1)
    assert wd.total_iters == 40
    hooks = {h.type: h for h in cfg.custom_hooks}
    assert hooks['dino_mm.TeacherTempHook'].warmup_iters == declared // 3 * 40 // declared
    assert any(f'max_iters {declared} -> 40' in c for c in changes)
    # the keys a user typed are kept; keep_lengths keeps every length
    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict({'train_cfg.max_iters': 40, 'param_scheduler.0.warmup_iters': 7,
                         'param_scheduler.0.batch_size_per_gpu': 32,
                         'train_dataloader.batch_size': 8})
    fit_schedules_to_run(cfg, declared, explicit=['param_scheduler.0.warmup_iters',
                                             'param_scheduler.0.batch_size_per_gpu'])
    assert cfg.param_scheduler[0].warmup_iters == 7
    assert cfg.param_scheduler[0].total_iters == 40
    assert cfg.param_scheduler[0].batch_size_per_gpu == 32
    cfg = Config.fromfile(DEMO)
    cfg.train_cfg.max_iters = 40
    assert fit_schedules_to_run(cfg, declared, keep_lengths=True) == []
    assert cfg.param_scheduler[0].total_iters == declared


def _scalars(work_dir):
    path = [p for p in __import__('glob').glob(osp.join(work_dir, '*', 'vis_data',
                                                        'scalars.json'))]
    assert path, f'no scalars.json under {work_dir}'
    rows = [json.loads(line) for line in open(path[0])]
    return {r['iter']: r for r in rows if 'lr' in r}


@pytest.fixture(scope='module')
def digits_pretrain_root(digits_root):
    """The demo digits with the ImageNet ``extra/`` files the pretraining dataset reads."""
    from dino_mm.datasets import dump_imagenet_extra
    if not osp.isfile(osp.join(digits_root, 'extra', 'entries-TRAIN.npy')):
        dump_imagenet_extra(digits_root, osp.join(digits_root, 'extra'), splits=('TRAIN', 'VAL'))
    return digits_root


def _train(work_dir, digits_root, tool_env, *opts):
    cmd = [sys.executable, 'tools/train.py', DEMO, '--work-dir', work_dir, '--cfg-options',
           f'train_dataloader.dataset.data_root={digits_root}',
           'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
           'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=100',
           'train_cfg.max_iters=3', *opts]
    proc = subprocess.run(cmd, cwd=ROOT, env=tool_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return _scalars(work_dir), proc.stdout + proc.stderr


def test_train_tool_lr_follows_overridden_batch_and_length(tmp_path, digits_pretrain_root,
                                                           tool_env):
    """Through tools/train.py: the logged lr of a 3-iteration run with batch 8 vs 32."""
    small, log = _train(str(tmp_path / 'b8'), digits_pretrain_root, tool_env,
                        'train_dataloader.batch_size=8')
    big, _ = _train(str(tmp_path / 'b32'), digits_pretrain_root, tool_env,
                    'train_dataloader.batch_size=32')
    assert '[schedules]' in log and 'batch_size_per_gpu 32 -> 8' in log
    # max_iters 1000 -> 3: warm-up 100 -> 0 iterations, so iteration 1 already trains (the
    # config's own lengths would give lr 0 there, inside a 100-iteration warm-up)
    assert small[1]['lr'] > 0
    # sqrt_wrt_1024: lr ~ sqrt(batch); the same group multipliers in both runs
    assert small[1]['lr'] / big[1]['lr'] == pytest.approx(math.sqrt(8 / 32), rel=1e-6)
    # the cosine over the 3 iterations: lr(it) / lr(0) = schedule(it) / schedule(0)
    base = scale_lr(0.004, 'sqrt_wrt_1024', 8, world_size=1)
    expect = [1e-6 + 0.5 * (base - 1e-6) * (1 + math.cos(math.pi * it / 3)) for it in range(3)]
    got = [small[it + 1]['lr'] for it in range(3)]  # mmengine logs iteration it as it + 1
    for it in range(3):
        assert got[it] / got[0] == pytest.approx(expect[it] / expect[0], rel=1e-6)


# ------------------------------------------------------------ resume on another world size
def test_resume_on_other_world_size_uses_new_lr_from_first_iteration(monkeypatch):
    kw = dict(param_name='lr', base_value=0.004, final_value=0.0, total_iters=100,
              warmup_iters=10, scaling_rule='sqrt_wrt_1024', batch_size_per_gpu=32)
    monkeypatch.setattr(schedulers, 'get_world_size', lambda: 8)
    opt = _optimizer()
    sched = DINOCosineParamScheduler(opt, **kw)
    for _ in range(20):
        opt.step()
        sched.step()
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    old_lr = opt.param_groups[0]['lr']
    # the run resumes on 2 ranks: optimizer state first, then the scheduler (MMEngine order)
    monkeypatch.setattr(schedulers, 'get_world_size', lambda: 2)
    opt2 = _optimizer()
    sched2 = DINOCosineParamScheduler(opt2, **kw)
    opt2.load_state_dict(opt_state)
    assert opt2.param_groups[0]['lr'] == old_lr  # what the checkpoint holds
    sched2.load_state_dict(sched_state)
    expect = sched2.schedule(20)
    assert expect == pytest.approx(old_lr * math.sqrt(2 / 8))
    assert [g['lr'] for g in opt2.param_groups] == pytest.approx([expect, expect])
    # and an unchanged world size resumes with exactly the value it had
    monkeypatch.setattr(schedulers, 'get_world_size', lambda: 8)
    opt3 = _optimizer()
    sched3 = DINOCosineParamScheduler(opt3, **kw)
    opt3.load_state_dict(opt_state)
    sched3.load_state_dict(sched_state)
    assert opt3.param_groups[0]['lr'] == old_lr


# ----------------------------------------------------------------------- v2 schedules
def test_v2_schedule_scales_peak_and_end_like_build_schedulers_v2():
    opt = _optimizer(1)
    sched = DINOCosineParamScheduler(opt, 'lr', base_value=5e-5, final_value=1e-5,
                                     total_iters=50, warmup_iters=10,
                                     freeze_last_layer_iters=3,
                                     scaling_rule='sqrt_wrt_1024_v3', batch_size_per_gpu=64,
                                     schedule_version='v2')
    factor = 4 * math.sqrt(64 / 1024)
    for it in (0, 5, 9, 10, 30, 49, 50, 80):
        want = linear_warmup_cosine_decay(it, 0.0, 5e-5 * factor, 1e-5 * factor, 10,
                                          total_iters=50)
        assert sched.schedule(it) == pytest.approx(want, rel=1e-12, abs=0)
    # warm-up end point excluded (v1's linspace would reach the peak at it = 9)
    assert sched.schedule(9) < 5e-5 * factor
    assert sched.last_layer_schedule(2) == 0.0 and sched.last_layer_schedule(3) > 0
    with pytest.raises(ValueError, match='schedule_version'):
        DINOCosineParamScheduler(_optimizer(1), 'lr', 1.0, 0.0, 10, schedule_version='v3')
    with pytest.raises(ValueError, match='freeze_iters'):
        DINOCosineParamScheduler(_optimizer(1), 'lr', 1.0, 0.0, 10, freeze_iters=2,
                                 schedule_version='v2')


@pytest.mark.parametrize('leaf, peak, end', [
    ('dinov3_vit7b16_pretrain.py', 5e-5, 5e-5),
    ('dinov3_vit7b16_gram_anchor.py', 3e-5, 3e-5),
    ('dinov3_vit7b16_high_res_adapt.py', 0.0, 1.25e-5),
])
def test_dinov3_7b_stage_lr_follows_official_v2_scaling(leaf, peak, end, monkeypatch):
    """Official 256-GPU runs: peak and end both x 4 sqrt(B / 1024) (constant after warm-up)."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', leaf))
    spec = dict(cfg.param_scheduler[0])
    assert spec.pop('type') == 'dino_mm.DINOCosineParamScheduler'
    monkeypatch.setattr(schedulers, 'get_world_size', lambda: 256)
    sched = DINOCosineParamScheduler(_optimizer(1), **spec)
    factor = 4 * math.sqrt(256 * cfg.train_dataloader.batch_size / 1024)
    total = spec['total_iters']
    assert sched.schedule(total - 1) == pytest.approx(
        linear_warmup_cosine_decay(total - 1, 0.0, peak * factor, end * factor,
                                   spec.get('warmup_iters', 0), total_iters=total))
    assert sched.schedule(total + 5) == pytest.approx(end * factor)
