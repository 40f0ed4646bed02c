"""One run per work dir: a second tools/train.py into a busy work dir exits non-zero
naming the holder's pid; the lock dies with its holder (kill -9 included)."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'vit-tiny_cls_digits.py')
LOCK_MODULE = osp.join(ROOT, 'dino_mm', 'engine', 'workdir_lock.py')
PY = sys.executable

# A holder that only imports the (stdlib-only) lock module by path: it starts in
# milliseconds. With "fork" it leaves a grandchild alive that inherited the descriptor.
HOLDER = r'''
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location('workdir_lock', sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
lock.lock_work_dir(sys.argv[2])
if len(sys.argv) > 3 and sys.argv[3] == 'fork':
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # like a DataLoader worker: lives on after its parent was killed
        os.write(ready_w, b'1')  # Python code runs after the at-fork handlers
        time.sleep(120)
        os._exit(0)
    os.read(ready_r, 1)
    print(child, flush=True)
print('locked', flush=True)
time.sleep(120)
'''


def _lock_module():
    import importlib
    return importlib.import_module('dino_mm.engine.workdir_lock')


def _start_holder(work_dir, *extra):
    proc = subprocess.Popen([PY, '-c', HOLDER, LOCK_MODULE, str(work_dir), *extra],
                            stdout=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f'the holder exited before locking: {lines}'
        lines.append(line.strip())
        if line.strip() == 'locked':
            return proc, lines


def _kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.timeout(120)
def test_lock_refuses_second_holder_and_dies_with_the_first(tmp_path):
    lock = _lock_module()
    wd = tmp_path / 'wd'
    holder, _ = _start_holder(wd)
    try:
        record = json.loads((wd / lock.LOCK_FILE).read_text())
        assert record['pid'] == holder.pid
        with pytest.raises(lock.WorkDirLockedError) as err:
            lock.lock_work_dir(str(wd))
        assert f'pid {holder.pid}' in str(err.value) and str(wd) in str(err.value)
        assert err.value.holder['pid'] == holder.pid
    finally:
        _kill9(holder)
    # the kernel released the flock with the killed process; the stale file is harmless
    assert lock.lock_work_dir(str(wd)) == str(wd / lock.LOCK_FILE)
    try:
        assert json.loads((wd / lock.LOCK_FILE).read_text())['pid'] == os.getpid()
        assert lock.lock_work_dir(str(wd))  # re-entrant in the holding process
    finally:
        lock.unlock_work_dir(str(wd))
    holder, _ = _start_holder(wd)  # released by unlock_work_dir too
    _kill9(holder)


@pytest.mark.timeout(120)
def test_forked_children_do_not_keep_the_lock(tmp_path):
    lock = _lock_module()
    wd = tmp_path / 'wd'
    holder, lines = _start_holder(wd, 'fork')
    grandchild = int(lines[0])
    try:
        _kill9(holder)
        os.kill(grandchild, 0)  # the forked child is still alive ...
        assert lock.lock_work_dir(str(wd))  # ... and yet the lock is free
        lock.unlock_work_dir(str(wd))
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_only_global_rank_zero_locks(monkeypatch):
    lock = _lock_module()
    for var in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'):
        monkeypatch.delenv(var, raising=False)
    assert lock.global_rank_from_env('none') == 0
    monkeypatch.setenv('RANK', '3')
    assert lock.global_rank_from_env('none') == 0  # no launcher: a single process
    assert lock.global_rank_from_env('pytorch') == 3
    monkeypatch.setenv('SLURM_PROCID', '5')
    assert lock.global_rank_from_env('slurm') == 5
    monkeypatch.setenv('OMPI_COMM_WORLD_RANK', '0')
    assert lock.global_rank_from_env('mpi') == 0
    monkeypatch.setenv('RANK', 'x')
    with pytest.raises(ValueError, match="RANK='x'"):
        lock.global_rank_from_env('pytorch')


def _opts(digits_root, max_iters, ckpt_interval=2):
    return ['--cfg-options', f'train_dataloader.dataset.data_root={digits_root}',
            f'val_dataloader.dataset.data_root={digits_root}',
            f'test_dataloader.dataset.data_root={digits_root}',
            'model.backbone.img_size=16', 'train_dataloader.batch_size=8',
            f'train_cfg.max_iters={max_iters}', 'train_cfg.val_interval=100000',
            f'param_scheduler.0.end={max(max_iters, 2)}',
            f'default_hooks.checkpoint.interval={ckpt_interval}',
            'default_hooks.logger.interval=1']


@pytest.mark.timeout(900)
def test_second_train_run_into_a_busy_work_dir_is_refused(tmp_path, digits_root, tool_env):
    wd = tmp_path / 'wd'
    log = open(tmp_path / 'holder.log', 'w')
    holder = subprocess.Popen([PY, 'tools/train.py', CONFIG, '--work-dir', str(wd),
                               *_opts(digits_root, 100000, ckpt_interval=100000)],
                              cwd=ROOT, env=tool_env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 400
        while 'Iter(train)' not in open(tmp_path / 'holder.log').read():
            # until the first run trains (its lock taken and its files written)
            assert holder.poll() is None, open(tmp_path / 'holder.log').read()[-3000:]
            assert time.time() < deadline, 'the first run never started training'
            time.sleep(0.5)
        before = sorted(os.listdir(wd))
        second = subprocess.run([PY, 'tools/train.py', CONFIG, '--work-dir', str(wd),
                                 *_opts(digits_root, 2)], cwd=ROOT, env=tool_env,
                                capture_output=True, text=True, timeout=400)
        assert second.returncode == 2, (second.returncode, second.stderr[-3000:])
        assert f'pid {holder.pid}' in second.stderr and 'in use' in second.stderr
        assert '--work-dir' in second.stderr
        assert holder.poll() is None  # the first run goes on ...
        assert sorted(os.listdir(wd)) == before  # ... and the second wrote nothing
        assert json.loads((wd / '.lock').read_text())['pid'] == holder.pid
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        log.close()
    # kill -9 left the .lock file behind: a new run takes the lock and trains
    assert (wd / '.lock').exists()
    third = subprocess.run([PY, 'tools/train.py', CONFIG, '--work-dir', str(wd),
                            *_opts(digits_root, 2)], cwd=ROOT, env=tool_env,
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert osp.isfile(wd / 'iter_2.pth')
