"""tools/train.py, tools/test.py, dist_train.sh, slurm_train.sh on the tiny demo config."""
import glob
import os
import os.path as osp
import stat
import subprocess
import sys

import pytest
import torch

from dino_mm.engine.checkpoint import safe_torch_load

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'vit-tiny_cls_digits.py')
PY = sys.executable


def _opts(digits_root, max_iters, extra=()):
    return ['--cfg-options', f'data_root={digits_root}',
            f'train_dataloader.dataset.data_root={digits_root}',
            f'val_dataloader.dataset.data_root={digits_root}',
            f'test_dataloader.dataset.data_root={digits_root}',
            'model.backbone.img_size=16',
            'train_dataloader.batch_size=16',
            # no random flip: an uninterrupted run and a resumed run must match exactly
            'train_dataloader.dataset.pipeline.1.prob=0.0',
            f'train_cfg.max_iters={max_iters}', 'train_cfg.val_interval=1000',
            # an explicit schedule length: MMEngine otherwise ends the schedule at the
            # first run's max_iters, and tools/train.py scales T_max with max_iters, which
            # a stopped-early run does not share (explicitly typed values are kept)
            'param_scheduler.0.end=200', 'param_scheduler.0.T_max=200',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
            'randomness.deterministic=True', *extra]


def _run(cmd, env, cwd=ROOT, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def test_train_then_resume_matches_uninterrupted_run(tmp_path, digits_root, tool_env):
    full, part = str(tmp_path / 'full'), str(tmp_path / 'part')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', full, *_opts(digits_root, 6)],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', part, *_opts(digits_root, 4)],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    saved4 = safe_torch_load(osp.join(part, 'iter_4.pth'))
    assert saved4['meta']['iter'] == 4
    # Resume (latest checkpoint in the work dir) and continue to 6 iterations.
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', part, '--resume',
              *_opts(digits_root, 6)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert 'resumed epoch: 0, iter: 4' in log
    a = safe_torch_load(osp.join(full, 'iter_6.pth'))
    b = safe_torch_load(osp.join(part, 'iter_6.pth'))
    assert b['meta']['iter'] == 6
    for k, v in a['state_dict'].items():
        torch.testing.assert_close(b['state_dict'][k], v, rtol=0, atol=1e-6, msg=k)
    # optimizer state continued from the checkpoint (AdamW step counters are 6, not 2)
    steps = {int(s['step']) for s in b['optimizer']['state'].values()}
    assert steps == {6}
    for pid, st in a['optimizer']['state'].items():
        torch.testing.assert_close(b['optimizer']['state'][pid]['exp_avg_sq'],
                                   st['exp_avg_sq'], rtol=0, atol=1e-9)


def test_resume_from_explicit_path_and_test_tool(tmp_path, digits_root, tool_env):
    wd = str(tmp_path / 'wd')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, *_opts(digits_root, 2)],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, '--resume',
              osp.join(wd, 'iter_2.pth'), *_opts(digits_root, 4)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 2' in p.stdout + p.stderr
    out = str(tmp_path / 'metrics.json')
    p = _run([PY, 'tools/test.py', CONFIG, osp.join(wd, 'iter_4.pth'), '--work-dir', wd,
              '--out', out, *_opts(digits_root, 4)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    import json
    metrics = json.load(open(out))
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0


def test_corrupt_checkpoint_gives_clear_error(tmp_path, digits_root, tool_env):
    wd = str(tmp_path / 'wd')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, *_opts(digits_root, 2)],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = osp.join(wd, 'iter_2.pth')
    data = open(ckpt, 'rb').read()
    with open(ckpt, 'wb') as f:
        f.write(data[:len(data) // 3])
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, '--resume', ckpt,
              *_opts(digits_root, 4)], tool_env)
    assert p.returncode != 0
    assert 'iter_2.pth' in p.stderr and 'truncated or corrupt' in p.stderr


def test_unknown_type_gives_clear_error(tmp_path, digits_root, tool_env):
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', str(tmp_path),
              *_opts(digits_root, 2, ['model.backbone.type=dino_mm.NoSuchBackbone'])],
             tool_env)
    assert p.returncode != 0
    assert 'NoSuchBackbone' in p.stderr and 'registry' in p.stderr


@pytest.mark.dist
def test_dist_train_two_cpu_processes(tmp_path, digits_root, tool_env, free_port):
    wd = str(tmp_path / 'dist')
    env = dict(tool_env, PORT=free_port, PYTHON=PY)
    p = _run(['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', wd,
              *_opts(digits_root, 2)], env)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    log = p.stdout + p.stderr
    assert "'world_size': 2" in log.replace('"', "'") or 'world_size: 2' in log or \
        'Distributed launcher: pytorch' in log
    assert osp.isfile(osp.join(wd, 'iter_2.pth'))
    ckpt = safe_torch_load(osp.join(wd, 'iter_2.pth'))
    assert ckpt['meta']['iter'] == 2


FAKE_SRUN = r'''#!/usr/bin/env bash
# Records its arguments, then plays the role of SLURM: runs the command once per task
# with the SLURM variables a real srun would set.
printf '%s\n' "$@" > "$FAKE_SRUN_LOG"
ntasks=1
cmd=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ntasks=*) ntasks="${1#--ntasks=}"; shift ;;
    -p|--partition) shift 2 ;;
    -*) shift ;;
    *) cmd=("$@"); break ;;
  esac
done
pids=()
for ((r=0; r<ntasks; r++)); do
  SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NTASKS=$ntasks SLURM_NODELIST=localhost \
  MASTER_PORT=$FAKE_MASTER_PORT MASTER_ADDR=127.0.0.1 \
    bash -c 'env | grep -E "^(SLURM_|PYTHONPATH=)" | sort > "$FAKE_SRUN_LOG.env.$SLURM_PROCID"; exec "$@"' _ "${cmd[@]}" \
    > "$FAKE_SRUN_LOG.out.$r" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
'''


@pytest.mark.dist
def test_slurm_train_builds_srun_command_and_runs_ranks(tmp_path, digits_root, tool_env,
                                                        free_port):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    srun = bindir / 'srun'
    srun.write_text(FAKE_SRUN)
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    log = str(tmp_path / 'srun.log')
    wd = str(tmp_path / 'slurm_wd')
    env = dict(tool_env, PATH=f'{bindir}{os.pathsep}{tool_env["PATH"]}', GPUS='2',
               GPUS_PER_NODE='2', CPUS_PER_TASK='1', SRUN_ARGS='--quotatype=auto',
               FAKE_SRUN_LOG=log, FAKE_MASTER_PORT=free_port, PYTHON=PY,
               # left in the submitting shell by an earlier single-process job: inside the
               # srun step the SLURM variables must win (else both tasks are rank 0 of 1)
               RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
    p = _run(['bash', 'tools/slurm_train.sh', 'debugpart', 'dino_job', CONFIG, wd,
              *_opts(digits_root, 2)], env)
    outs = '\n'.join(f'--- {f}\n' + open(f).read()[-3000:]
                      for f in sorted(glob.glob(log + '.out.*')))
    assert p.returncode == 0, f'{p.stderr[-2000:]}\n{outs}'
    args = open(log).read().split('\n')
    assert args[:2] == ['-p', 'debugpart']
    for expected in ('--job-name=dino_job', '--gres=gpu:2', '--ntasks=2',
                     '--ntasks-per-node=2', '--cpus-per-task=1', '--kill-on-bad-exit=1',
                     '--quotatype=auto'):
        assert expected in args, (expected, args)
    i = args.index(osp.join(ROOT, 'tools', 'train.py'))
    assert args[i - 2:i] == [PY, '-u']
    assert args[i + 1:i + 4] == [CONFIG, '--work-dir', wd]
    assert '--launcher' in args and args[args.index('--launcher') + 1] == 'slurm'
    for rank in (0, 1):
        env_lines = open(f'{log}.env.{rank}').read()
        assert f'SLURM_PROCID={rank}' in env_lines and 'SLURM_NTASKS=2' in env_lines
        assert f'PYTHONPATH={ROOT}' in env_lines
    assert osp.isfile(osp.join(wd, 'iter_2.pth'))


def test_project_config_inherits_and_registers_custom_head(tmp_path, digits_root, tool_env):
    cfg = osp.join(ROOT, 'projects', 'example_custom_linear_probe', 'configs',
                   'vit-tiny_cosine-head_custom-folder.py')
    wd = str(tmp_path / 'proj')
    p = _run([PY, 'tools/train.py', cfg, '--work-dir', wd, *_opts(digits_root, 2)],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = safe_torch_load(osp.join(wd, 'iter_2.pth'))
    assert 'head.weight' in ckpt['state_dict']  # the project's CosineClsHead was used
    # frozen_stages=0 from the project config: the patch embedding did not move
    from mmengine.config import Config
    merged = Config.fromfile(cfg)
    assert merged.model.backbone.frozen_stages == 0
    assert merged.model.backbone.embed_dim == 64  # inherited from the demo config
