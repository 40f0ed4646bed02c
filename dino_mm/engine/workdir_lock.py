"""One training run per work dir: an exclusive ``flock`` on ``<work_dir>/.lock``.

Two runs started into the same ``--work-dir`` otherwise both run to the end and exit 0,
overwriting each other's checkpoints, ``last_checkpoint`` and config dump. The first run
takes an exclusive, non-blocking ``fcntl.flock`` on ``<work_dir>/.lock`` and writes its
pid, host, start time and command line into it; a second run finds the lock taken and
stops at once, before it writes anything, with a message naming the holder.

* The kernel drops the lock when the holder exits, however it exits (``kill -9``,
  OOM killer, node reboot): a left-over ``.lock`` file is never "stale", the next run
  simply takes the lock and rewrites the file.
* Forked children (DataLoader workers) do not keep the lock alive after their parent
  died: their copy of the descriptor is closed right after the fork. Exec'ed children
  never get it (the descriptor is not inheritable).
* Distributed runs share one work dir, so only the process of global rank 0 takes the
  lock (:func:`global_rank_from_env` reads the launcher's variables before any process
  group exists). When it refuses to start, the launcher (torchrun, ``srun
  --kill-on-bad-exit``) stops the other ranks.
* On file systems without ``flock`` support (some Lustre / old NFS mounts) the run
  starts with a warning that a concurrent run would not be detected.
"""
import errno
import json
import os
import os.path as osp
import socket
import sys
import time
import warnings
from typing import Dict, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, no lock
    fcntl = None

__all__ = ['LOCK_FILE', 'WorkDirLockedError', 'global_rank_from_env', 'lock_work_dir',
           'unlock_work_dir']

LOCK_FILE = '.lock'
# launcher -> environment variables holding the global rank, in order of preference
_RANK_VARS = {
    'pytorch': ('RANK', ),
    'slurm': ('SLURM_PROCID', 'RANK'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'PMI_RANK', 'RANK'),
}
_held: Dict[str, int] = {}  # real path of the work dir -> descriptor holding the lock
_fork_hook_registered = False


class WorkDirLockedError(RuntimeError):
    """Another live process holds the lock of the work dir."""

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


def global_rank_from_env(launcher: Optional[str]) -> int:
    """Global rank of this process from the launcher's environment (0 if unknown).

    Args:
        launcher (str, optional): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``,
            as ``tools/train.py --launcher``.
    """
    for var in _RANK_VARS.get(str(launcher), ()):
        value = os.environ.get(var)
        if value not in (None, ''):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f'--launcher {launcher}: environment variable {var}='
                                 f'{value!r} is not an integer rank.') from None
    return 0


def _close_in_forked_child() -> None:
    # Only this process's reference is closed; the parent keeps the lock (flock locks
    # belong to the open file description, released when *every* descriptor is closed).
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


def _read_holder(fd: int) -> dict:
    """The holder's record; it may not be written yet for a few ms after it locked."""
    text = ''
    for _ in range(20):
        text = os.pread(fd, 65536, 0).decode('utf-8', 'replace').strip()
        if text:
            break
        time.sleep(0.05)
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if 'pid' not in holder:
        return 'a process that has not written its pid yet'
    text = f'pid {holder["pid"]}'
    if holder.get('host'):
        text += f' on host {holder["host"]}'
    if holder.get('started'):
        text += f', started {holder["started"]}'
    if holder.get('argv'):
        text += f', command: {" ".join(str(a) for a in holder["argv"])}'
    return text


def lock_work_dir(work_dir: str) -> Optional[str]:
    """Take the exclusive lock of ``work_dir`` for the life of this process.

    Creates ``work_dir`` if needed. Calling it again for a work dir this process
    already holds is a no-op.

    Args:
        work_dir (str): The run's work dir.

    Returns:
        str | None: Path of the lock file, or None when the file system (or the
        platform) does not support ``flock`` (a warning says so).

    Raises:
        WorkDirLockedError: Another live process holds the lock; the message names its
            pid, host and command line, and what to do.
    """
    global _fork_hook_registered
    if fcntl is None:  # pragma: no cover
        return None
    real = osp.realpath(osp.expanduser(str(work_dir)))
    path = osp.join(real, LOCK_FILE)
    if real in _held:
        return path
    os.makedirs(real, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkDirLockedError(
                f'Work dir "{work_dir}" is in use by another training run '
                f'({_describe(holder)}), which holds the lock "{path}". Two runs in one '
                'work dir overwrite each other\'s checkpoints. Wait for it to finish, '
                f'stop it (kill {holder.get("pid", "<pid>")}), or pass a different '
                '--work-dir.',
                holder) from None
        os.close(fd)
        warnings.warn(f'Could not lock work dir "{work_dir}" ({path}: {err.strerror}); '
                      'the file system does not support flock, so a second run started '
                      'into this work dir would not be detected.', RuntimeWarning,
                      stacklevel=2)
        return None
    record = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=time.strftime('%Y-%m-%d %H:%M:%S'), argv=list(sys.argv))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + '\n').encode('utf-8'), 0)
    _held[real] = fd
    if not _fork_hook_registered and hasattr(os, 'register_at_fork'):
        os.register_at_fork(after_in_child=_close_in_forked_child)
        _fork_hook_registered = True
    return path


def unlock_work_dir(work_dir: str) -> None:
    """Release the lock this process holds on ``work_dir`` (no-op if it holds none).

    The ``.lock`` file stays (removing it would let a waiting run lock a file that a
    third run then recreates); its content is cleared.
    """
    real = osp.realpath(osp.expanduser(str(work_dir)))
    fd = _held.pop(real, None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # the last descriptor of this process: the lock is released
