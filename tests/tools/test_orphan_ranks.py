"""Killing the torchrun agent must not leave its ranks training on as orphans.

``tools/dist_train.sh`` starts ``torchrun``, whose agent starts one process per rank.
``kill -9`` of the agent used to leave both ranks running to ``max_iters``; the
``ParentProcessWatchHook`` that tools/train.py adds to launched runs ends them.
"""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'vit-tiny_cls_digits.py')


def _children(pid):
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def _alive(pid):
    """Running (a zombie nobody reaps, as under a container's pid 1, counts as gone)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ('Z', 'X')


def _read(path):
    with open(path, errors='replace') as f:
        return f.read()


@pytest.mark.dist
@pytest.mark.timeout(150)
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_killing_the_torchrun_agent_stops_both_ranks(tmp_path, digits_root, tool_env,
                                                     free_port):
    log = str(tmp_path / 'dist.log')
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={digits_root}',
            f'val_dataloader.dataset.data_root={digits_root}',
            f'test_dataloader.dataset.data_root={digits_root}', 'model.backbone.img_size=16',
            'train_dataloader.batch_size=8', 'train_cfg.max_iters=1000000',
            'train_cfg.val_interval=1000000', 'default_hooks.checkpoint.interval=1000000',
            'default_hooks.logger.interval=1']
    env = dict(tool_env, PORT=free_port, PYTHON=sys.executable)
    with open(log, 'w') as out:
        launcher = subprocess.Popen(
            ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(tmp_path / 'wd'),
             *opts], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    ranks = []
    try:
        # bash -> torchrun agent -> two ranks; wait until they train
        deadline = time.monotonic() + 90
        agent = None
        while time.monotonic() < deadline:
            agents = [p for p in _children(launcher.pid) if 'torch.distributed.run' in
                      _cmdline(p)]
            if agents:
                agent = agents[0]
                ranks = [p for p in _children(agent) if 'tools/train.py' in _cmdline(p)]
            if len(ranks) == 2 and 'Iter(train) [' in _read(log):
                break
            assert launcher.poll() is None, _read(log)[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail(f'the two ranks did not start training in 90 s:\n{_read(log)[-3000:]}')

        os.kill(agent, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in ranks):
            time.sleep(0.5)
        survivors = [p for p in ranks if _alive(p)]
        assert not survivors, (f'ranks {survivors} still run 30 s after the torchrun agent '
                               f'was killed:\n{_read(log)[-3000:]}')
        text = _read(log)
        assert 'its launcher process (pid' in text and f'(pid {agent}' in text, text[-3000:]
        assert '--resume' in text
    finally:
        for pid in ranks:  # only the processes this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait(timeout=30)


CHILD = r'''
import sys, time, types
from mmengine.logging import MMLogger
from dino_mm.engine.hooks import ParentProcessWatchHook
runner = types.SimpleNamespace(launcher='pytorch', work_dir='WD',
                               logger=MMLogger.get_instance('orphan_test'))
ParentProcessWatchHook(poll_interval=0.2, grace=1.0).before_run(runner)
print('watching', flush=True)
time.sleep(120)  # a main thread that never reaches an iteration boundary
'''

PARENT = r'''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=sys.stdout,
                         stderr=sys.stdout)
print(child.pid, flush=True)
time.sleep(120)
'''


@pytest.mark.timeout(90)
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc')
def test_blocked_rank_is_ended_after_the_grace_period(tmp_path, tool_env):
    """A rank stuck in a collective never reaches the hook's iteration check: the
    watcher thread ends it ``grace`` seconds after the parent died."""
    out_path = tmp_path / 'out.txt'
    with open(out_path, 'w') as out:
        parent = subprocess.Popen([sys.executable, '-c', PARENT, CHILD], cwd=ROOT,
                                  env=tool_env, stdout=out, stderr=subprocess.STDOUT)
    child = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'watching' not in _read(out_path):
            assert parent.poll() is None, _read(out_path)
            time.sleep(0.2)
        child = int(_read(out_path).split()[0])
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.2)
        assert not _alive(child), _read(out_path)
        text = _read(out_path)
        assert f'its launcher process (pid {parent.pid}' in text, text
        assert 'did not stop within grace=1 s' in text, text
    finally:
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)


def test_single_process_runs_are_not_watched():
    import types

    from dino_mm.engine.hooks import ParentProcessWatchHook
    from dino_mm.engine.runner_utils import apply_common_args
    from mmengine.config import Config
    hook = ParentProcessWatchHook()
    hook.before_run(types.SimpleNamespace(launcher='none'))
    assert hook._thread is None
    cfg = apply_common_args(Config(dict(custom_hooks=[])), 'x.py', None, 'none')
    assert cfg.custom_hooks == []
    cfg = apply_common_args(Config(dict(custom_hooks=[])), 'x.py', None, 'pytorch')
    assert [h['type'] for h in cfg.custom_hooks] == ['dino_mm.ParentProcessWatchHook']
    with pytest.raises(ValueError, match='poll_interval > 0'):
        ParentProcessWatchHook(poll_interval=0)
