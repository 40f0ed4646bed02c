"""Safe, atomic checkpoints for MMEngine runners under torch >= 2.6.

Two problems of the pinned stack are fixed here (see ../shared/STACK.md):

* ``torch.load`` defaults to ``weights_only=True`` since torch 2.6 and MMEngine 0.10.7
  checkpoints hold objects the safe unpickler rejects (``HistoryBuffer`` of the message
  hub, numpy arrays and scalars), so ``--resume`` fails. Rather than switching
  ``weights_only`` off for every file, dino_mm writes checkpoints made only of tensors
  and plain containers (:func:`to_plain`), and reads them back with the safe unpickler
  (:func:`safe_torch_load`), restoring the few typed objects it encoded
  (:func:`from_plain`). Checkpoints written by plain MMEngine still load when all they
  hold is an allow-listed set of numpy / MMEngine types; anything else fails with a
  message naming the file and the offending global.
* MMEngine writes checkpoints in place, so a job killed while saving leaves a truncated
  file under the name of the last good one. :class:`AtomicLocalBackend` writes to a
  temporary file in the same folder, fsyncs it and renames it over the target.

Importing this module registers both fixes: the local file backend and the ``''``
scheme of :class:`mmengine.runner.CheckpointLoader`, used for every local path.
"""
import io
import os
import os.path as osp
import pickle
import tempfile
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

from dino_mm.registry import HOOKS

__all__ = [
    'AtomicLocalBackend', 'atomic_write_bytes', 'atomic_torch_save', 'safe_torch_load',
    'to_plain', 'from_plain', 'CheckpointError', 'PlainCheckpointHook'
]

_TYPE_KEY = '__dino_mm_type__'
# Opt-in escape hatch for files the user trusts (e.g. an old checkpoint with pickled
# custom objects). Never on by default.
UNSAFE_ENV = 'DINO_MM_TRUST_CHECKPOINTS'


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read; the message names the file and the fix."""


# --------------------------------------------------------------------------- atomic I/O
def atomic_write_bytes(data: Union[bytes, memoryview], filepath: str) -> None:
    """Write ``data`` to ``filepath`` so that readers see the old file or the new one.

    The bytes go to a temporary file in the same directory (same file system, so the
    final ``os.replace`` is atomic), which is flushed and fsynced before the rename.
    """
    filepath = osp.abspath(osp.expanduser(str(filepath)))
    folder = osp.dirname(filepath)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.', suffix='.tmp',
                               dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # persist the rename itself
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_torch_save(obj: Any, filepath: str) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`, in the plain safe format."""
    buffer = io.BytesIO()
    torch.save(to_plain(obj), buffer)
    atomic_write_bytes(buffer.getbuffer(), filepath)


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend with atomic ``put`` / ``put_text``."""

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        atomic_write_bytes(obj, str(filepath))

    def put_text(self, obj: str, filepath: Union[str, os.PathLike],
                 encoding: str = 'utf-8') -> None:
        atomic_write_bytes(obj.encode(encoding), str(filepath))


# ------------------------------------------------------------- plain (safe) encoding
def to_plain(obj: Any) -> Any:
    """Turn a checkpoint into tensors and builtin containers only.

    ``HistoryBuffer`` and numpy arrays become tagged dicts of tensors so that
    :func:`from_plain` can restore them; numpy scalars become Python scalars; dict
    subclasses (``ConfigDict``, ``OrderedDict``) keep their items.
    """
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_TYPE_KEY: 'HistoryBuffer',
                'log_history': torch.from_numpy(np.ascontiguousarray(log)),
                'count_history': torch.from_numpy(np.ascontiguousarray(count)),
                'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in 'biufc':
            return {_TYPE_KEY: 'ndarray', 'data': torch.from_numpy(np.ascontiguousarray(obj))}
        return {_TYPE_KEY: 'ndarray_list', 'data': to_plain(obj.tolist()),
                'dtype': obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[to_plain(k)] = to_plain(v)
        if hasattr(obj, '_metadata'):  # module versions of a state_dict
            out._metadata = obj._metadata
        return out
    if isinstance(obj, tuple) and not hasattr(obj, '_fields'):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return {_TYPE_KEY: 'set', 'data': [to_plain(v) for v in obj]}
    if isinstance(obj, torch.dtype) or isinstance(obj, torch.device):
        return obj
    # Anything else would need pickling of a custom class: keep its text form instead
    # of making the whole checkpoint unloadable by the safe unpickler.
    return {_TYPE_KEY: 'repr', 'data': repr(obj)}


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        tag = obj.get(_TYPE_KEY) if _TYPE_KEY in obj else None
        if tag == 'HistoryBuffer':
            buf = HistoryBuffer(max_length=obj['max_length'])
            buf._log_history = obj['log_history'].numpy()
            buf._count_history = obj['count_history'].numpy()
            return buf
        if tag == 'ndarray':
            return obj['data'].numpy()
        if tag == 'ndarray_list':
            return np.array(from_plain(obj['data']), dtype=np.dtype(obj['dtype']))
        if tag == 'set':
            return set(from_plain(v) for v in obj['data'])
        if tag == 'repr':
            return obj['data']
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = from_plain(v)
        if hasattr(obj, '_metadata'):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


# ----------------------------------------------------------------------- safe load
def _legacy_safe_globals() -> list:
    """Types a plain MMEngine 0.10.7 checkpoint holds that are safe to rebuild.

    ``builtins.getattr`` (which numpy 2 uses to pickle some dtypes) is deliberately
    not in the list: it would let a file call arbitrary methods of allowed types.
    """
    allowed = [HistoryBuffer, np.ndarray, np.dtype]
    core = getattr(np, '_core', None) or np.core
    for name in ('_reconstruct', 'scalar'):
        fn = getattr(core.multiarray, name, None)
        if fn is not None:
            allowed.append(fn)
    for dt in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
               np.uint8, np.uint16, np.uint32, np.uint64, np.bool_):
        allowed.append(type(np.dtype(dt)))
    return allowed


@contextmanager
def _allow_legacy_globals():
    with torch.serialization.safe_globals(_legacy_safe_globals()):
        yield


def _corrupt_message(filename: str, err: BaseException) -> str:
    size = osp.getsize(filename)
    return (f'Checkpoint file "{filename}" ({size} bytes) is truncated or corrupt and '
            f'cannot be read ({type(err).__name__}: {err}). It was probably written by a '
            f'job that was killed while saving. Delete it and resume from an earlier '
            f'checkpoint (e.g. `--resume PATH` with the previous iter_*.pth), or fix '
            f'the "last_checkpoint" file in the work dir.')


def safe_torch_load(filename: str, map_location: Union[str, Callable, torch.device,
                                                       None] = 'cpu') -> Any:
    """Load a checkpoint with the safe unpickler, with clear errors.

    Args:
        filename (str): Path of the checkpoint file.
        map_location: As in :func:`torch.load`. Defaults to ``'cpu'``.

    Returns:
        The checkpoint, with :func:`to_plain` encodings restored.

    Raises:
        FileNotFoundError: The file does not exist.
        CheckpointError: The file is truncated / corrupt, or holds objects the safe
            unpickler rejects (the message names the global and the opt-in switch).
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file "{filename}" does not exist.')
    if osp.getsize(filename) == 0:
        raise CheckpointError(_corrupt_message(filename, EOFError('empty file')))
    with open(filename, 'rb') as f:
        magic = f.read(4)
    if magic[:2] == b'PK' and not zipfile.is_zipfile(filename):
        raise CheckpointError(_corrupt_message(
            filename, zipfile.BadZipFile('zip central directory missing')))
    trusted = os.environ.get(UNSAFE_ENV, '') == '1'
    try:
        if trusted:
            ckpt = torch.load(filename, map_location=map_location, weights_only=False)
        else:
            with _allow_legacy_globals():
                ckpt = torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if 'Weights only load failed' in text or 'Unsupported global' in text:
            first = [line for line in text.splitlines() if 'GLOBAL' in line]
            detail = first[0].strip() if first else text.splitlines()[0]
            raise CheckpointError(
                f'Checkpoint file "{filename}" contains Python objects that the safe '
                f'loader (torch.load weights_only=True) refuses: {detail}. dino_mm writes '
                f'checkpoints that load safely; this one was written elsewhere. If you '
                f'trust the file, set {UNSAFE_ENV}=1 to load it with the full unpickler, '
                f'or re-save it with dino_mm.engine.checkpoint.atomic_torch_save.') from err
        raise CheckpointError(_corrupt_message(filename, err)) from err
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(_corrupt_message(filename, err)) from err
    return from_plain(ckpt)


def _load_from_local_safe(filename: str, map_location=None) -> Any:
    return safe_torch_load(filename, map_location=map_location)


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Encode checkpoints as tensors + builtin containers before MMEngine saves them.

    With this hook (on in ``configs/_base_/default_runtime.py``) every checkpoint loads
    with ``weights_only=True``, so ``--resume`` works on torch >= 2.6.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)


def register_safe_checkpointing() -> None:
    """Install the atomic local backend and the safe local checkpoint loader."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local_safe, force=True)


register_safe_checkpointing()
