"""DINOv2 pretraining end to end through ``tools/train.py`` on the demo config.

The real recipe (``configs/demo/dinov2_vit-tiny_digits.py``: DINO + iBOT + KoLeo, multi-crop,
iBOT block masks, EMA teacher, official lr / wd / momentum / temperature schedules, layer-wise
lr decay, last-layer freeze) shrunk by ``--cfg-options`` to a 2-block ViT on 16 px digits, so
each run takes a few seconds on one CPU thread.

1. Kill + resume: run A trains 6 iterations uninterrupted; run B is SIGKILLed after its
   4th iteration (after the iteration-3 checkpoint), then ``--resume`` continues it to 6.
   Every loss term of every iteration and the final student, teacher, centers and AdamW
   state are *bit-identical* to run A. (With MMEngine's plain ``InfiniteSampler`` they are
   not: resuming skips the trained batches by loading them again without the model steps
   in between, which shifts the RNG streams of the crops, the masks and drop path; the
   base config uses ``dino_mm.SeededInfiniteSampler``, which seeds them per sample.)
2. Bad input: NaN pixels at iteration 4 make the DINOv2 model raise ``FloatingPointError``
   naming the loss terms; the runner stops with exit code 1, the message is on stderr, and
   the last checkpoint on disk (iteration 2) is complete and loads strictly.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest
import torch

from dino_mm.engine.checkpoint import safe_torch_load

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'dinov2_vit-tiny_digits.py')
MAX_ITERS = 6
LOSS_KEYS = ('loss', 'dino_local_crops_loss', 'dino_global_crops_loss', 'koleo_loss',
             'ibot_loss')

# Imported by the training subprocesses through `custom_imports`.
HOOKS_MODULE = '''
import os
import signal

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAfterIterHook(Hook):
    """SIGKILL the process right after (1-based) iteration `at`, like a preempted job."""

    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class NaNPixelsAtIterHook(Hook):
    """Corrupt the local crops of (1-based) iteration `at` with NaN, like a bad image."""

    def __init__(self, at):
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            data_batch['collated_local_crops'][0].fill_(float('nan'))
'''


@pytest.fixture(scope='module')
def digits_root(tmp_path_factory):
    sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset

    from dino_mm.datasets import dump_imagenet_extra
    root = str(tmp_path_factory.mktemp('digits'))
    make_digits_dataset(root, size=16)
    dump_imagenet_extra(root, osp.join(root, 'extra'), splits=('TRAIN', ))
    return root


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    hooks_dir = tmp_path_factory.mktemp('hooks')
    (hooks_dir / 'dinov2_pretrain_test_hooks.py').write_text(HOOKS_MODULE)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, str(hooks_dir), env.get('PYTHONPATH', '')])
    env['OMP_NUM_THREADS'] = '1'
    return env


def _cfg_options(digits_root, checkpoint_interval):
    """Tiny model, crops, batch and schedules; every schedule spans MAX_ITERS."""
    return [
        f'data_root={digits_root}', f'train_dataloader.dataset.data_root={digits_root}',
        'model.backbone.patch_size=4', 'model.backbone.img_size=16',
        'model.backbone.embed_dim=32', 'model.backbone.depth=2', 'model.backbone.num_heads=2',
        'model.dino_head.out_dim=64', 'model.dino_head.hidden_dim=32',
        'model.dino_head.bottleneck_dim=16', 'train_dataloader.batch_size=4',
        # augmentations in the main process: the per-position reseeding is exact there
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'train_dataloader.collate_fn.patch_size=4',
        'train_dataloader.dataset.pipeline.1.global_crops_size=16',
        'train_dataloader.dataset.pipeline.1.local_crops_size=8',
        'train_dataloader.dataset.pipeline.1.local_crops_number=2',
        f'train_cfg.max_iters={MAX_ITERS}', f'param_scheduler.0.total_iters={MAX_ITERS}',
        'param_scheduler.0.warmup_iters=2', 'param_scheduler.0.freeze_last_layer_iters=1',
        f'param_scheduler.1.total_iters={MAX_ITERS}', 'custom_hooks.0.warmup_iters=3',
        f'default_hooks.checkpoint.interval={checkpoint_interval}',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',
        'randomness.seed=0', 'randomness.deterministic=True',
    ]


def _config_with_hook(tmp_path, hook: dict) -> str:
    """A config inheriting the demo config, with one test hook appended."""
    path = tmp_path / f'{hook["type"].split(".")[-1]}.py'
    path.write_text(f'_base_ = [{CONFIG!r}]\n'
                    "custom_imports = dict(imports=['dinov2_pretrain_test_hooks'], "
                    'allow_failed_imports=False)\n'
                    f'custom_hooks = _base_.custom_hooks + [{hook!r}]\n')
    return str(path)


def _train(config, work_dir, env, options, *extra):
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
           str(work_dir), *extra, '--cfg-options', *options]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _load_train_tool():
    spec = importlib.util.spec_from_file_location('dino_mm_train_tool',
                                                  osp.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scalars(work_dir) -> dict:
    """Logged scalars per 1-based iteration, from every run (timestamp dir) in work_dir."""
    out = {}
    for path in sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                out[rec['iter']] = rec
    return out


@pytest.fixture(scope='module')
def resume_runs(digits_root, env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('resume')
    options = _cfg_options(digits_root, checkpoint_interval=3)
    full, part = tmp / 'full', tmp / 'part'
    proc = _train(CONFIG, full, env, options)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killer = _config_with_hook(tmp, dict(type='mmengine.KillAfterIterHook', at=4))
    killed = _train(killer, part, env, options)
    killed_scalars = _scalars(part)
    killed_ckpts = sorted(osp.basename(p) for p in glob.glob(osp.join(str(part), '*.pth')))
    resumed = _train(CONFIG, part, env, options, '--resume')
    return dict(full=full, part=part, killed=killed, killed_scalars=killed_scalars,
                killed_ckpts=killed_ckpts, resumed=resumed)


def test_killed_run_resumes_to_the_uninterrupted_curve(resume_runs):
    killed, resumed = resume_runs['killed'], resume_runs['resumed']
    full, part = resume_runs['full'], resume_runs['part']
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Killed after iteration 4 was logged: the resumed run rolls back to the iteration-3
    # checkpoint and trains iteration 4 again.
    assert sorted(resume_runs['killed_scalars']) == [1, 2, 3, 4]
    assert resume_runs['killed_ckpts'] == ['iter_3.pth']
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert 'resumed epoch: 0, iter: 3' in log
    assert 'Advance dataloader 3 steps' in log

    ref, got = _scalars(full), _scalars(part)  # `got`: the resumed run's 4-6 win
    assert sorted(ref) == sorted(got) == list(range(1, MAX_ITERS + 1))
    assert len(glob.glob(osp.join(str(part), '*', 'vis_data', 'scalars.json'))) == 2
    for it in range(1, MAX_ITERS + 1):
        for key in LOSS_KEYS + ('lr', 'teacher_temp', 'momentum_teacher'):
            # Bit-identical: same float32 values, not merely close.
            assert got[it][key] == ref[it][key], (it, key, got[it][key], ref[it][key])
            if it <= 4:  # the killed run itself
                assert resume_runs['killed_scalars'][it][key] == ref[it][key], (it, key)
    # The curve is not trivially constant (the schedules and the model really move).
    assert len({ref[it]['loss'] for it in ref}) == MAX_ITERS

    a = safe_torch_load(osp.join(str(full), f'iter_{MAX_ITERS}.pth'))
    b = safe_torch_load(osp.join(str(part), f'iter_{MAX_ITERS}.pth'))
    assert a['meta']['iter'] == b['meta']['iter'] == MAX_ITERS
    assert a['state_dict'].keys() == b['state_dict'].keys()
    teacher = [k for k in a['state_dict'] if k.startswith('teacher.')]
    assert any(k.startswith('teacher.backbone.blocks.1.') for k in teacher)
    for key, value in a['state_dict'].items():  # teacher, student and both centers
        assert torch.equal(b['state_dict'][key], value), key
    assert 'dino_loss.center' in a['state_dict'] and 'ibot_patch_loss.center' in a['state_dict']
    for pid, state in a['optimizer']['state'].items():
        assert int(b['optimizer']['state'][pid]['step']) == MAX_ITERS
        for name in ('exp_avg', 'exp_avg_sq'):
            assert torch.equal(b['optimizer']['state'][pid][name], state[name]), (pid, name)


def test_nan_loss_stops_training_and_keeps_last_checkpoint(digits_root, env, tmp_path):
    from mmengine.config import Config

    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    options = _cfg_options(digits_root, checkpoint_interval=2)
    work = tmp_path / 'work'
    config = _config_with_hook(tmp_path, dict(type='mmengine.NaNPixelsAtIterHook', at=4))
    proc = _train(config, work, env, options)

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'FloatingPointError' in proc.stderr
    assert 'the total loss is not finite' in proc.stderr
    assert 'dino_local_crops_loss=nan' in proc.stderr  # the message names the loss terms
    # Iterations 1-3 trained and were logged; the runner stopped at iteration 4.
    assert sorted(_scalars(work)) == [1, 2, 3]
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(str(work), '*.pth'))) == [
        'iter_2.pth'
    ]
    assert not glob.glob(osp.join(str(work), '.*.tmp'))  # no half-written checkpoint
    with open(osp.join(str(work), 'last_checkpoint')) as f:
        assert f.read().strip().endswith('iter_2.pth')

    ckpt = safe_torch_load(osp.join(str(work), 'iter_2.pth'))
    assert ckpt['meta']['iter'] == 2
    assert {'state_dict', 'optimizer', 'param_schedulers', 'message_hub'} <= set(ckpt)
    for key, value in ckpt['state_dict'].items():
        assert torch.isfinite(value).all(), key
    # Complete: loads strictly into the model the config builds.
    register_all_modules(init_default_scope=False)
    train_tool = _load_train_tool()
    args = train_tool.parse_args([CONFIG, '--work-dir', str(work), '--cfg-options', *options])
    cfg = train_tool.merge_args(Config.fromfile(CONFIG), args)  # exactly what was trained
    model = MODELS.build(cfg.model)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    n_student = sum(1 for p in model.student.parameters() if p.requires_grad)
    assert len(ckpt['optimizer']['state']) == n_student


def test_seeded_sampler_order_and_per_position_seeds():
    import random

    import numpy as np
    from mmengine.dataset import InfiniteSampler

    from dino_mm.datasets import SeededInfiniteSampler
    data = list(range(10))
    plain, seeded = iter(InfiniteSampler(data, seed=3)), SeededInfiniteSampler(data, seed=3)
    it = iter(seeded)
    draws = []
    for position in range(25):  # crosses two epochs of the shuffled order
        assert next(it) == next(plain)
        # Right after handing out a position, every process RNG is seeded from it alone,
        # whatever consumed random numbers before (here: the previous iteration's draws).
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
        seed = seeded.sample_seed(position)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        assert draws[-1] == (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert len(set(draws)) == len(draws)
    # Ranks draw different augmentations; the order of the whole sequence is unchanged.
    other_rank = SeededInfiniteSampler(data, seed=3)
    other_rank.rank = 1
    assert other_rank.sample_seed(0) != seeded.sample_seed(0)
    assert SeededInfiniteSampler(data, seed=4).sample_seed(0) != seeded.sample_seed(0)
