"""The official DINOv2 FSDP precision through the user's door: ``tools/dist_train.sh`` on 2
gloo ranks with FlexibleRunner + DINOFSDPStrategy(mixed_precision='fp16') +
dino_mm.FP16OptimWrapper (as the ``*_fsdp.py`` recipes), on the embedded digits demo.

The run trains, writes DCP checkpoint folders whose meta holds the loss scale, and
``--resume`` continues from them with the saved scale.
"""
import os.path as osp
import sys

import pytest

from dino_mm.engine.checkpoint import safe_torch_load
from tests.pretrain.test_dinov2_pretrain import CONFIG, MAX_ITERS, _cfg_options
from tests.pretrain.test_dinov2_pretrain import digits_root  # noqa: F401 (the fixture with the extra metadata)
from tests.tools.test_train_test_tools import _run

FSDP_FP16 = ['+runner_type=FlexibleRunner', '+strategy.type=dino_mm.DINOFSDPStrategy',
             '+strategy.mixed_precision=fp16', '+model_wrapper_cfg=None',
             'optim_wrapper.type=dino_mm.FP16OptimWrapper',
             # a start that the tiny head's fp16 gradients do not overflow at once
             '+optim_wrapper.loss_scale.init_scale=64.0']


def _train(work_dir, digits_root, env, iters, resume=False):
    options = [o for o in _cfg_options(digits_root, 2) if not o.startswith(
        ('train_cfg.max_iters', 'param_scheduler.0.total_iters',
         'param_scheduler.1.total_iters'))]
    options += [f'train_cfg.max_iters={iters}', f'param_scheduler.0.total_iters={MAX_ITERS}',
                f'param_scheduler.1.total_iters={MAX_ITERS}', *FSDP_FP16]
    return _run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', work_dir,
                 *(['--resume'] if resume else []), '--cfg-options', *options], env)


@pytest.mark.dist
def test_fp16_fsdp_trains_checkpoints_the_scale_and_resumes(tmp_path, digits_root, tool_env,
                                                            free_port):
    env = dict(tool_env, PORT=free_port, PYTHON=sys.executable)
    wd = str(tmp_path / 'fp16')
    p = _train(wd, digits_root, env, 2)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert 'FP16OptimWrapper: ShardedGradScaler on cpu, initial scale 64' in log
    ckpt = osp.join(wd, 'iter_2.pth')
    assert osp.isdir(ckpt) and osp.isfile(osp.join(ckpt, '.metadata'))  # a DCP folder
    meta = safe_torch_load(osp.join(ckpt, 'meta.pth'))
    scale = meta['loss_scaler']['scale']
    assert 0 < scale <= 64.0
    p = _train(wd, digits_root, env, 4, resume=True)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert 'Resume sharded checkpoint' in log
    resumed = safe_torch_load(osp.join(wd, 'iter_4.pth', 'meta.pth'))
    assert resumed['meta']['iter'] == 4
    # the resumed run started from the saved scale (no growth in 2 steps; halved per skip)
    assert resumed['loss_scaler']['scale'] <= scale
