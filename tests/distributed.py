"""Launching a test's own workers with ``torchrun`` on gloo.

One place for the three things every such launch needs: a port nobody else can be holding,
an environment without the parent's torch.distributed variables, and a failure message
that shows *each rank's* own error (torchrun's summary alone says only "SIGABRT").
"""
import glob
import os
import os.path as osp
import random
import socket
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: torch.distributed variables an in-process test may leave in os.environ; a job launched
#: from a test must not inherit them (its launcher sets its own).
DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
             'MASTER_PORT', 'GROUP_RANK', 'TORCHELASTIC_RUN_ID')


def free_port() -> str:
    """A port that is free now, taken *below* the kernel's ephemeral range.

    ``bind(0)`` hands out an ephemeral port, which the kernel may give to another
    process's outgoing connection (gloo opens many) before the launched job binds it
    (EADDRINUSE). Ports under the ephemeral range are only ever taken by an explicit bind.
    """
    try:
        low = int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, min(low, 32768) - 1)
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                continue
            return str(port)
    raise RuntimeError('no free TCP port found between 20000 and the ephemeral range')


def launch_env() -> dict:
    """The parent's environment minus torch.distributed variables, the project first on
    ``PYTHONPATH``: what a job launched from a test starts from."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


def worker_env(**extra) -> dict:
    """:func:`launch_env` without CUDA, one thread, plus ``extra``."""
    env = launch_env()
    env.pop('CUDA_VISIBLE_DEVICES', None)
    env['OMP_NUM_THREADS'] = '1'
    env.update(extra)
    return env


def rank_logs(log_dir: str, tail: int = 4000) -> str:
    """The end of every rank's stdout / stderr that torchrun wrote under ``log_dir``."""
    parts = []
    for path in sorted(glob.glob(osp.join(log_dir, '**', '*.log'), recursive=True)):
        with open(path, errors='replace') as f:
            text = f.read()
        if text.strip():
            parts.append(f'----- {osp.relpath(path, log_dir)} -----\n{text[-tail:]}')
    return '\n'.join(parts) or f'(no rank logs under {log_dir})'


def torchrun(script: str, *args: str, nproc: int, log_dir: str, timeout: float,
             env: dict = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` on a free port; rank output teed to ``log_dir``.

    The output stays on the console (``run.stdout`` / ``run.stderr`` as before) and is also
    written per rank, so :func:`failure` can show each rank's traceback.
    """
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc),
           '--master_addr', '127.0.0.1', '--master_port', free_port(),
           '--log-dir', log_dir, '--tee', '3', script, *args]
    return subprocess.run(cmd, env=env or worker_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def failure(run: subprocess.CompletedProcess, log_dir: str) -> str:
    """An assertion message: torchrun's own summary, then each rank's log."""
    return (f'torchrun exited {run.returncode}\n{run.stderr[-2500:]}\n'
            f'===== rank logs =====\n{rank_logs(log_dir)}')
