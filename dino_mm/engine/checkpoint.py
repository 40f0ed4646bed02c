"""Safe, atomic checkpoints for MMEngine runners under torch >= 2.6.

Two problems of the pinned stack are fixed here (see docs/setup.md, "Known problems of the
pinned packages"):

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

Two more protect the checkpoints a run writes and the ones it loads
(:class:`SafeCheckpointHook`, served for every ``type='CheckpointHook'``):

* A checkpoint with NaN / Inf weights or optimizer state is never written (nor pointed
  at by ``last_checkpoint``, nor does it rotate a good one away): training stops with an
  error naming the iteration and the last good file. New files are written before old
  ones are removed, and ``last_checkpoint`` is replaced atomically.
* A ``load_from`` / ``--resume`` / ``tools/test.py`` checkpoint that fills no (or too
  little) of the model is an error naming the file and its key prefixes, not a warning
  followed by a run on random weights (:func:`check_checkpoint_matches_model`).

Importing this module registers the fixes: the local file backend, the ``''`` scheme of
:class:`mmengine.runner.CheckpointLoader`, used for every local path, and the hook.
"""
import io
import os
import os.path as osp
import pickle
import re
import tempfile
import time
import zipfile
from collections import Counter, OrderedDict, deque
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dist import all_reduce, get_dist_info, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.runner import BaseLoop, CheckpointLoader
from torch import nn

from dino_mm.registry import HOOKS

__all__ = [
    'AtomicLocalBackend', 'atomic_write_bytes', 'atomic_torch_save', 'safe_torch_load',
    'to_plain', 'from_plain', 'CheckpointError', 'PlainCheckpointHook',
    'NonFiniteWeightsError', 'SafeCheckpointHook', 'find_non_finite_tensors',
    'check_checkpoint_matches_model', 'describe_key_prefixes', 'check_checkpoint_file',
    'describe_checkpoint_directory', 'is_sharded_checkpoint',
    'find_resume_checkpoint', 'clean_stale_temporary_files', 'load_checkpoint_state',
    'check_checkpoint_compatibility'
]

_TYPE_KEY = '__dino_mm_type__'
# Opt-in escape hatch for files the user trusts (e.g. an old checkpoint with pickled
# custom objects). Never on by default.
UNSAFE_ENV = 'DINO_MM_TRUST_CHECKPOINTS'


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read; the message names the file and the fix."""


# --------------------------------------------------------------------------- atomic I/O
def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no read-only query elsewhere: set and restore at once
    os.umask(mask)
    return mask


def atomic_write(filepath: str, write: Callable[[str], None]) -> str:
    """Write ``filepath`` so that readers see the old file or the complete new one.

    ``write(tmp)`` writes the content to a temporary path in the same directory (same
    file system, so the final ``os.replace`` is atomic); the file is fsynced before the
    rename and the directory after it. A failing ``write`` leaves no temporary file and
    the old file untouched. This is the one place dino_mm publishes files (checkpoints,
    converted weights, feature shards, indexes).

    Returns:
        str: The absolute path written.
    """
    filepath = osp.abspath(osp.expanduser(str(filepath)))
    folder = osp.dirname(filepath)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.', suffix='.tmp',
                               dir=folder)
    try:
        # mkstemp creates the file 0600; published files get the mode open() would give.
        os.fchmod(fd, 0o666 & ~_current_umask())
        os.close(fd)
        write(tmp)
        with open(tmp, 'rb+') as f:
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
    return filepath


def atomic_write_bytes(data: Union[bytes, memoryview], filepath: str) -> None:
    """Write ``data`` to ``filepath`` atomically (see :func:`atomic_write`)."""

    def dump(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(data)
    atomic_write(filepath, dump)


def atomic_torch_save(obj: Any, filepath: str) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`, in the plain safe format."""
    atomic_write_bytes(torch_save_bytes(to_plain(obj)), filepath)


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


def _empty_message(filename: str) -> str:
    return (f'Checkpoint file "{filename}" is empty (0 bytes), so it is truncated or '
            f'corrupt: nothing was written into it (a job killed as it began to save, a '
            f'full disk, or a failed copy / download). Delete it, then copy or download '
            f'the file again, or resume from an earlier checkpoint (`--resume PATH` with '
            f'the previous iter_*.pth, or fix the "last_checkpoint" file of the work dir).')


def is_sharded_checkpoint(path: str, complete: bool = True) -> bool:
    """Whether ``path`` is a DCP folder (a ``DINOFSDPStrategy`` checkpoint).

    Args:
        path (str): The path to test.
        complete (bool): Require the ``.metadata`` file that DCP writes last (a folder
            that can be loaded). With False, ``*.distcp`` shards alone also count, to
            recognise (and describe) an interrupted or damaged one. Defaults to True.
    """
    try:
        names = os.listdir(path)
    except OSError:
        return False
    if '.metadata' in names and osp.isfile(osp.join(path, '.metadata')):
        return True
    return not complete and any(n.endswith('.distcp') for n in names)


def describe_checkpoint_directory(path: str) -> str:
    """The message for a directory given where a checkpoint file is expected."""
    path = str(path)
    if is_sharded_checkpoint(path, complete=False):
        return (f'Checkpoint "{path}" is a directory, not a checkpoint file: a sharded '
                f'(FSDP / DCP) checkpoint folder written by dino_mm.DINOFSDPStrategy. '
                f'Resume it with the same FSDP config, or consolidate it into one file '
                f'first: `python tools/convert/consolidate_sharded.py {path} backbone.pth '
                f'--full model.pth` (backbone.pth: the backbone in the official layout; '
                f'model.pth: the whole model, for load_from / tools/test.py).')
    try:
        names = sorted(os.listdir(path))
    except OSError as err:
        names, unreadable = [], f' (its content cannot be listed: {err})'
    else:
        unreadable = ''
    files = [n for n in names if n.endswith(('.pth', '.pt', '.bin', '.safetensors'))
             and osp.isfile(osp.join(path, n))]
    if 'config.json' in names and files:
        what = (f'It looks like a HF transformers model folder: load it with '
                f'tools/convert/convert_checkpoint.py {path} OUT.pth, or pass '
                f'"{osp.join(path, files[0])}".')
    elif files:
        what = (f'Pass one of the checkpoint files in it instead, e.g. '
                f'"{osp.join(path, files[-1])}".')
    else:
        shown = ', '.join(names[:6]) + (', ...' if len(names) > 6 else '')
        what = (f'It holds no checkpoint file ({shown or "it is empty"}){unreadable}: '
                f'pass the path of a checkpoint file.')
    return f'Checkpoint "{path}" is a directory, not a checkpoint file. {what}'


def check_checkpoint_file(filename: str) -> str:
    """Fail early, with the right message, for a path that cannot be a checkpoint file.

    Returns:
        str: ``filename`` (user-expanded).

    Raises:
        FileNotFoundError: Nothing exists at ``filename``.
        CheckpointError: ``filename`` is a directory (sharded checkpoint folders are
            named as such) or an empty file.
    """
    filename = osp.expanduser(str(filename))
    if osp.isdir(filename):
        raise CheckpointError(describe_checkpoint_directory(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file "{filename}" does not exist.')
    if osp.getsize(filename) == 0:
        raise CheckpointError(_empty_message(filename))
    return filename


_GLOBAL_NAME = re.compile(r'GLOBAL ([A-Za-z_][\w.]*)\.([A-Za-z_][\w.]*) was not an allowed')
_PICKLE_PROTO = b'\x80'


def _head(filename: str, n: int = 512) -> bytes:
    with open(filename, 'rb') as f:
        return f.read(n)


def _is_torch_zip(filename: str) -> bool:
    try:
        with zipfile.ZipFile(filename) as zf:
            return any(n.endswith('/data.pkl') or n == 'data.pkl' for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _as_text(head: bytes) -> Optional[str]:
    """The start of the file as text, or None when it is binary."""
    if not head or b'\x00' in head or head.startswith(_PICKLE_PROTO):
        return None
    for cut in range(4):  # a multi-byte character may be split at the end
        try:
            text = head[:len(head) - cut].decode('utf-8')
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    printable = sum(ch.isprintable() or ch in '\n\r\t' for ch in text)
    return text if printable >= 0.95 * len(text) else None


def _holds_pickled_objects(filename: str, err: BaseException) -> Optional[str]:
    """The refused global when ``filename`` is a real pickle / torch file, else None.

    Only a file that parses as a pickle up to a ``GLOBAL`` the safe unpickler refuses
    holds Python objects; garbage (a text file, random bytes) can make the unpickler
    report an "unsupported operand" or a nonsense global, which is no reason to suggest
    the unsafe loader.
    """
    text = str(err)
    match = _GLOBAL_NAME.search(text)
    if match is not None and (_is_torch_zip(filename)
                              or _head(filename, 1) == _PICKLE_PROTO
                              or _as_text(_head(filename)) is None):
        return f'{match.group(1)}.{match.group(2)}'
    return None


def _unreadable_message(filename: str, err: BaseException) -> str:
    """The message for a file the safe loader could not read (not a refused global)."""
    head = _head(filename)
    text = _as_text(head)
    size = osp.getsize(filename)
    if text is not None and text.startswith('version https://git-lfs'):
        return (f'Checkpoint file "{filename}" ({size} bytes) is a Git LFS pointer, a '
                f'small text file that stands for the real checkpoint, not a checkpoint: '
                f'fetch the real file (`git lfs pull` in its repository) or download it '
                f'again.')
    if text is not None:
        first = text.strip().splitlines()[0][:80] if text.strip() else ''
        return (f'Checkpoint file "{filename}" ({size} bytes) is not a checkpoint: it is '
                f'a text file (it starts with {first!r}), not one written by torch.save. '
                f'Check the path (a config, a log or an error page saved by a failed '
                f'download?) and pass a checkpoint (.pth) file.')
    if head.startswith(_PICKLE_PROTO) and not _is_torch_zip(filename) and \
            'Unsupported operand' in str(err) and len(head) > 1 and 2 <= head[1] <= 5:
        return (f'Checkpoint file "{filename}" ({size} bytes) is a plain Python pickle '
                f'(protocol {head[1]}, written by pickle.dump, not torch.save), which the '
                f'safe loader cannot read. If you trust the file, set {UNSAFE_ENV}=1 to load '
                f'it with the full unpickler, or re-save it with torch.save / '
                f'dino_mm.engine.checkpoint.atomic_torch_save.')
    reason = str(err).strip().splitlines()
    detail = EOFError('unexpected end of data') if not reason else err
    if 'Weights only load failed' in str(err):  # keep only torch's actual complaint
        tail = [line for line in reason if line.strip().startswith('Unsupported')]
        detail = pickle.UnpicklingError(' '.join(line.strip() for line in tail)
                                        or 'not a pickle')
    return (_corrupt_message(filename, detail) +
            ' (If the file was not written by torch.save at all, it is not a checkpoint: '
            'check the path.)')


def safe_torch_load(filename: str, map_location: Union[str, Callable, torch.device,
                                                       None] = 'cpu',
                    trusted: Optional[bool] = None) -> Any:
    """Load a checkpoint with the safe unpickler, with clear errors.

    Args:
        filename (str): Path of the checkpoint file.
        map_location: As in :func:`torch.load`. Defaults to ``'cpu'``.
        trusted (bool, optional): Use the full unpickler (only for files you trust, e.g.
            a tool's ``--unsafe-load``). Defaults to None: the ``DINO_MM_TRUST_CHECKPOINTS``
            environment variable decides (off unless it is ``1``).

    Returns:
        The checkpoint, with :func:`to_plain` encodings restored.

    Raises:
        FileNotFoundError: The file does not exist.
        CheckpointError: The path is a directory (e.g. a sharded checkpoint folder), the
            file is empty, truncated / corrupt or no checkpoint at all (e.g. a text
            file), or it holds objects the safe unpickler rejects (only then does the
            message name the global and the opt-in switch).
    """
    filename = check_checkpoint_file(filename)
    with open(filename, 'rb') as f:
        magic = f.read(4)
    if magic[:2] == b'PK' and not zipfile.is_zipfile(filename):
        raise CheckpointError(_corrupt_message(
            filename, zipfile.BadZipFile('zip central directory missing')))
    if trusted is None:
        trusted = os.environ.get(UNSAFE_ENV, '') == '1'
    try:
        if trusted:
            ckpt = torch.load(filename, map_location=map_location, weights_only=False)
        else:
            with _allow_legacy_globals():
                ckpt = torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = None if trusted else _holds_pickled_objects(filename, err)
        if refused is not None:
            raise CheckpointError(
                f'Checkpoint file "{filename}" contains Python objects that the safe '
                f'loader (torch.load weights_only=True) refuses: GLOBAL {refused}. '
                f'dino_mm writes checkpoints that load safely; this one was written '
                f'elsewhere. If you trust the file, set {UNSAFE_ENV}=1 to load it with the '
                f'full unpickler, or re-save it with '
                f'dino_mm.engine.checkpoint.atomic_torch_save.') from err
        raise CheckpointError(_unreadable_message(filename, err)) from err
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(_unreadable_message(filename, err)) from err
    return from_plain(ckpt)


def safe_load_bytes(buffer: io.BytesIO) -> Any:
    """Read one ``torch.save``-d value from memory with the safe unpickler (no code runs).

    Used for the non-tensor entries of sharded (DCP) checkpoints; errors propagate to the
    caller, which names the file and entry.
    """
    return torch.load(buffer, map_location='cpu', weights_only=True)


def torch_save_bytes(obj: Any) -> bytes:
    """``obj`` serialised by ``torch.save`` as bytes (write them with
    :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_checkpoint_state(path: str, what: str) -> Dict[str, torch.Tensor]:
    """Read the state dict of a training or backbone checkpoint with a clear error.

    Accepts MMEngine checkpoints (``state_dict``), official DINO teacher dumps
    (``teacher``), ``model`` dicts, bare state dicts and the sharded (DCP) checkpoint
    folders of :class:`dino_mm.DINOFSDPStrategy` (read in one process, safely), so a stage
    trained with FSDP can be the next stage's Gram teacher or distillation teacher.

    Args:
        path (str): Checkpoint file or sharded checkpoint folder.
        what (str): What the file is for (e.g. ``'model.gram_ckpt'``), used in errors.
    """
    if path and is_sharded_checkpoint(str(path)):
        from .fsdp import read_sharded_state_dict
        return read_sharded_state_dict(str(path))
    if path and osp.isdir(str(path)):
        raise FileNotFoundError(f'{what}: {describe_checkpoint_directory(str(path))}')
    if not path or not osp.isfile(str(path)):
        raise FileNotFoundError(
            f'{what}: checkpoint file "{path}" does not exist. Point it at the checkpoint '
            'written by the previous stage (e.g. work_dirs/<stage>/iter_<N>.pth) or run that '
            'stage first.')
    ckpt = safe_torch_load(str(path), map_location='cpu')
    if isinstance(ckpt, Mapping):
        for key in ('state_dict', 'teacher', 'model'):
            if isinstance(ckpt.get(key), Mapping):
                return dict(ckpt[key])
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return dict(ckpt)
    raise ValueError(f'{what}: "{path}" holds no state dict (expected a dict with '
                     "'state_dict', 'teacher' or 'model', or a dict of tensors).")


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_checkpoint_compatibility(path: str,
                                   target: Mapping[str, torch.Tensor],
                                   what: str,
                                   prefixes: Sequence[str] = ('', ),
                                   ignore_missing: Sequence[str] = (),
                                   max_listed: int = 5) -> Dict[str, torch.Tensor]:
    """Check that checkpoint ``path`` can be loaded strictly into ``target``.

    The first prefix of ``prefixes`` under which the checkpoint holds keys of ``target``
    is used (e.g. ``'teacher.backbone.'`` to take a backbone out of a training
    checkpoint). Keys of ``target`` that start with one of ``ignore_missing`` may be
    absent (e.g. ``gram_teacher.`` when stage 2 starts from a stage-1 checkpoint).

    Args:
        path (str): Checkpoint file.
        target (Mapping[str, torch.Tensor]): State dict of the receiving module.
        what (str): Name of the config entry, for the error message.
        prefixes (Sequence[str]): Candidate key prefixes in the checkpoint.
        ignore_missing (Sequence[str]): Target key prefixes that may be missing.
        max_listed (int): Mismatching keys listed in the error. Defaults to 5.

    Returns:
        dict: The checkpoint entries, prefix stripped, ready for ``load_state_dict``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Missing / unexpected keys or shape mismatches (a few listed).
    """
    state = load_checkpoint_state(path, what)
    chosen, sub = prefixes[0], {}
    for prefix in prefixes:
        sub = _strip_prefix(state, prefix)
        if set(sub) & set(target):
            chosen = prefix
            break
    missing = [k for k in target if k not in sub and not k.startswith(tuple(ignore_missing))]
    unexpected = [k for k in sub if k not in target]
    mismatched = [(k, tuple(sub[k].shape), tuple(target[k].shape)) for k in target
                  if k in sub and tuple(sub[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f'{what}: checkpoint "{path}" does not match the model'
                 f'{" (keys under prefix " + repr(chosen) + ")" if chosen else ""}:']
        if mismatched:
            lines.append(f'  {len(mismatched)} shape mismatches, e.g. ' + '; '.join(
                f'{k}: checkpoint {a} vs model {b}' for k, a, b in mismatched[:max_listed]))
        if missing:
            lines.append(f'  {len(missing)} keys missing from the checkpoint, e.g. ' +
                         ', '.join(missing[:max_listed]))
        if unexpected:
            lines.append(f'  {len(unexpected)} unexpected keys, e.g. ' +
                         ', '.join(unexpected[:max_listed]))
        lines.append('  The previous stage must use the same architecture (embed_dim, depth, '
                     'heads, patch size, storage tokens, head sizes); fix the config or point '
                     'at the right file.')
        raise ValueError('\n'.join(lines))
    return sub


def _load_from_local_safe(filename: str, map_location=None) -> Any:
    global _last_loaded
    checkpoint = safe_torch_load(filename, map_location=map_location)
    _last_loaded = (id(checkpoint), str(filename))
    return checkpoint


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Encode checkpoints as tensors + builtin containers before MMEngine saves them, so
    that every checkpoint loads with ``weights_only=True`` (``--resume`` on torch >= 2.6).

    :class:`SafeCheckpointHook` (every config's ``default_hooks.checkpoint``) does this
    itself; this hook is for runners whose checkpoint hook is another class.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)


# ------------------------------------------------------------- finite-weights check
class NonFiniteWeightsError(FloatingPointError):
    """The weights or optimizer state hold NaN / Inf: the checkpoint was not written."""


def _unwrap_model(model: nn.Module) -> nn.Module:
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _optim_wrappers(optim_wrapper) -> list:
    if optim_wrapper is None:
        return []
    if isinstance(optim_wrapper, OptimWrapperDict):
        return list(optim_wrapper.values())
    return [optim_wrapper]


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard of a DTensor held by this rank (the tensor itself otherwise)."""
    to_local = getattr(t, 'to_local', None)
    return to_local() if callable(to_local) else t


def find_non_finite_tensors(model: nn.Module, optim_wrapper=None) -> List[str]:
    """Names of the floating tensors of ``model`` / the optimizer state with NaN or Inf.

    Parameters, buffers and every tensor of the optimizer state are checked (for sharded
    models, the shard this rank holds). One device-to-host copy per device.

    Args:
        model (nn.Module): The model (wrappers are looked through).
        optim_wrapper: An ``OptimWrapper`` / ``OptimWrapperDict``, or None.

    Returns:
        list[str]: e.g. ``['backbone.blocks.0.attn.qkv.weight',
        "optimizer state 'exp_avg' of backbone.blocks.0.attn.qkv.weight"]``.
    """
    model = _unwrap_model(model)
    named: List[Tuple[str, torch.Tensor]] = []
    param_names = {}
    for name, p in model.named_parameters():
        named.append((name, p))
        param_names[id(p)] = name
    named.extend(model.named_buffers())
    for wrapper in _optim_wrappers(optim_wrapper):
        for p, state in wrapper.optimizer.state.items():
            owner = param_names.get(id(p), 'a parameter outside the model')
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    named.append((f'optimizer state {key!r} of {owner}', value))
    by_device: Dict[torch.device, list] = {}
    for i, (_, t) in enumerate(named):
        t = _local(t.detach())
        if (t.is_floating_point() or t.is_complex()) and t.numel() > 0:
            by_device.setdefault(t.device, []).append((i, t))
    bad = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in items]).cpu().tolist()
        bad.extend(i for (i, _), ok in zip(items, finite) if not ok)
    return [named[i][0] for i in sorted(bad)]


# ------------------------------------------------------------- checkpoint vs model
def _key_group(key: str) -> str:
    """``teacher.backbone.blocks.3.mlp.w`` -> ``teacher.backbone.``; ``cls_token`` stays."""
    out = []
    for part in key.split('.')[:-1]:
        if part.isdigit():
            if not out:  # e.g. an nn.Sequential's '0.weight'
                out.append(part)
            break
        out.append(part)
        if len(out) == 2:
            break
    return '.'.join(out) + '.' if out else key


def describe_key_prefixes(keys: Iterable[str], limit: int = 8) -> str:
    """Group state-dict keys by prefix: ``'teacher.backbone.' (38 keys), ...``."""
    counts = Counter(_key_group(k) for k in keys)
    if not counts:
        return '(no tensors at all)'
    groups = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ', '.join(f"'{g}' ({n} key{'s' if n != 1 else ''})" for g, n in groups[:limit])
    if len(groups) > limit:
        text += f', and {len(groups) - limit} more prefixes'
    return text


def _count_matches(ckpt: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                   rename: Callable[[str], Optional[str]]) -> int:
    n = 0
    for k, v in ckpt.items():
        k2 = rename(k)
        if k2 is not None and k2 in target and tuple(target[k2].shape) == tuple(v.shape):
            n += 1
    return n


def _mismatch_hint(source: str, ckpt: Mapping[str, torch.Tensor],
                   target: Mapping[str, torch.Tensor]) -> str:
    tops = {k.split('.', 1)[0] for k in ckpt}
    if tops & {'teacher', 'student', 'gram_teacher'}:
        return (f'This is a pretraining (student / teacher) checkpoint. Extract its '
                f'backbone with `python tools/convert/pretrain_to_backbone.py {source} '
                f'backbone.pth` and evaluate that file with a kNN / logistic-regression '
                f'config (`python tools/test.py configs/eval/knn/<config>.py backbone.pth`), '
                f'or first train this config on it (tools/train.py with a config that '
                f"inherits this one and sets model.backbone.init_cfg=dict(type='Pretrained', "
                f"checkpoint='backbone.pth')) and test the checkpoint that run writes.")
    best = None  # (matches, description)
    for prefix in sorted({_key_group(k).split('.')[0] + '.' for k in ckpt if '.' in k}):
        n = _count_matches(ckpt, target, lambda k: k[len(prefix):]
                           if k.startswith(prefix) else None)
        if n and (best is None or n > best[0]):
            best = (n, f"{n} of its tensors match the model once the prefix '{prefix}' is "
                       f'removed from their names')
    for prefix in sorted({k.split('.', 1)[0] + '.' for k in target if '.' in k}):
        n = _count_matches(ckpt, target, lambda k: prefix + k)
        if n and (best is None or n > best[0]):
            best = (n, f"{n} of its tensors match the model's '{prefix}*' entries, without "
                       f"that prefix: a backbone-only file. Give it to the backbone "
                       f"(model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...) "
                       f'for training, `backbone_checkpoint` in kNN / logistic-regression '
                       f'configs) instead of passing it as the model checkpoint')
    if best is not None:
        return f'Of this file, {best[1]}.'
    return ('Check that the checkpoint was written for this config (same model type and '
            'architecture), or convert it first (tools/convert/convert_checkpoint.py for '
            'official / HF / timm backbones, tools/convert/pretrain_to_backbone.py for '
            'pretraining checkpoints).')


def check_checkpoint_matches_model(model: nn.Module, state_dict: Mapping[str, Any],
                                   source: str, *, min_loaded_fraction: float = 0.5,
                                   require_all_parameters: bool = False) -> dict:
    """Refuse to load a checkpoint that fills no (or too little) of ``model``.

    MMEngine loads ``load_from`` / ``--resume`` files with ``strict=False`` and only
    warns about missing keys, so a checkpoint of another model (e.g. a pretraining
    checkpoint given to a classification config) loads nothing and the run carries on
    with random weights. This check runs before the tensors are copied into the model.

    Args:
        model (nn.Module): The receiving model (wrappers are looked through).
        state_dict (Mapping): The checkpoint's state dict (non-tensors are ignored).
        source (str): The checkpoint file, for the message.
        min_loaded_fraction (float): Smallest share of the model's weights (elements of
            its parameters and buffers) that must be loaded. Defaults to 0.5.
        require_all_parameters (bool): Also fail when any parameter is missing or
            mis-shaped (evaluation: nothing else initialises them). Defaults to False.

    Returns:
        dict: ``matched``, ``missing`` (parameter names) and ``loaded_fraction``.

    Raises:
        CheckpointError: Naming the file, the key prefixes found in it and in the
            model, and what to do.
    """
    model = _unwrap_model(model)
    target = model.state_dict(keep_vars=True)
    ckpt = OrderedDict((k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor))
    matched = [k for k, v in ckpt.items()
               if k in target and tuple(target[k].shape) == tuple(v.shape)]
    matched_set = set(matched)
    total = sum(t.numel() for t in target.values()) or 1
    loaded = sum(target[k].numel() for k in matched) / total
    params = [k for k, v in target.items() if isinstance(v, nn.Parameter)]
    missing = [k for k in params if k not in matched_set]
    too_few = not matched or loaded < min_loaded_fraction
    if too_few or (require_all_parameters and missing):
        name = type(model).__name__
        absent = f' ({len(missing)} of {len(params)} parameters missing)' if missing else ''
        lines = [f'Checkpoint "{source}" does not fit the model ({name}): '
                 f'{len(matched)} of its {len(ckpt)} tensors match the model, which fills '
                 f"{loaded:.1%} of the model's weights{absent}.",
                 f'  key prefixes in the checkpoint: {describe_key_prefixes(ckpt)}',
                 f'  key prefixes the model expects: {describe_key_prefixes(target)}']
        mis_shaped = [k for k, v in ckpt.items()
                      if k in target and tuple(target[k].shape) != tuple(v.shape)]
        if mis_shaped:
            k = mis_shaped[0]
            lines.append(f"  {len(mis_shaped)} tensors have the model's names but other "
                         f'shapes, e.g. {k}: checkpoint {tuple(ckpt[k].shape)} vs model '
                         f'{tuple(target[k].shape)} (another architecture, patch size, '
                         f'image size or number of classes).')
        if too_few:
            lines.append('  Loaded anyway, the run would go on with random weights (e.g. '
                         'chance accuracy). ' + _mismatch_hint(source, ckpt, target))
            lines.append(f'  Only if a partial load is intended, lower '
                         f'default_hooks.checkpoint.min_loaded_fraction (now '
                         f'{min_loaded_fraction}).')
        else:
            lines.append(f'  missing parameters, by prefix: {describe_key_prefixes(missing)}. '
                         'Nothing initialises them when a model is only evaluated, so the '
                         'results would come from random weights. Pass a checkpoint of the '
                         'whole model (the one tools/train.py writes for this config; for an '
                         'official segmentation head, merge its backbone with '
                         'tools/convert/convert_seg_head.py --backbone). Only if that is '
                         'intended, set default_hooks.checkpoint.strict_test_load=False.')
        raise CheckpointError('\n'.join(lines))
    return dict(matched=matched, missing=missing, loaded_fraction=loaded)


# Which file each checkpoint object returned by the local loader came from, so that the
# hooks that see the object (not the path) can name it. Only the last one is kept.
_last_loaded: Tuple[int, str] = (0, '')


def _loaded_from(checkpoint: Any) -> Optional[str]:
    ident, path = _last_loaded
    return path if ident == id(checkpoint) else None


# ----------------------------------------------------- work-dir housekeeping (resume)
# ``atomic_write_bytes`` names its temporary files ``.<target>.<8 chars of mkstemp>.tmp``;
# the FSDP strategy writes a sharded checkpoint into ``<target>.tmp/`` first.
_ATOMIC_TMP = re.compile(r'^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$')
_DCP_TMP = re.compile(r'^(?P<target>.+)\.tmp$')
_DCP_ENTRY = re.compile(r'^((__\d+)?\.metadata(\.tmp)?|__\d+_\d+\.distcp|meta\.pth|'
                        r'\.meta\.pth\.[a-z0-9_]{8}\.tmp)$')


def _is_stale_dcp_tmp(path: str) -> bool:
    """A ``<ckpt>.tmp`` folder holding only what ``save_sharded_checkpoint`` writes."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return all(_DCP_ENTRY.match(n) for n in names)


def clean_stale_temporary_files(folders: Iterable[str], older_than: float) -> List[str]:
    """Remove what killed checkpoint saves left behind in ``folders``; return the paths.

    Only entries in the checkpoint writers' own naming schemes are touched, and only
    when they were last modified before ``older_than`` (the start of the current run,
    ``time.time()``), so that no file a live writer holds is removed: the temporary
    files of :func:`atomic_write_bytes` (``.iter_20.pth.k3j_x9a2.tmp``) and the
    ``iter_20.pth.tmp/`` folders of a sharded (DCP) save. (A killed sharded save may
    also leave ``iter_N.pth.old/``, the previous copy of the checkpoint: it is kept.)

    Args:
        folders (Iterable[str]): Work dir / checkpoint dirs (missing ones are skipped).
        older_than (float): Only entries with an older modification time are removed.
    """
    removed = []
    seen = set()
    for folder in folders:
        if not folder or not osp.isdir(folder) or osp.realpath(folder) in seen:
            continue
        seen.add(osp.realpath(folder))
        for name in sorted(os.listdir(folder)):
            path = osp.join(folder, name)
            try:
                if osp.islink(path) or osp.getmtime(path) >= older_than:
                    continue
                if osp.isfile(path) and _ATOMIC_TMP.match(name):
                    os.unlink(path)
                elif (osp.isdir(path) and _DCP_TMP.match(name) and not name.startswith('.')
                      and _is_stale_dcp_tmp(path)):
                    import shutil
                    shutil.rmtree(path)
                else:
                    continue
            except OSError:
                continue  # gone meanwhile, or not ours to remove
            removed.append(path)
    return removed


def _finite_checkpoint(path: str) -> Tuple[bool, str]:
    """``(usable, why not)`` for a resume candidate: readable, with finite tensors."""
    if osp.isdir(path):
        if is_sharded_checkpoint(path, complete=False) and osp.isfile(osp.join(path, 'meta.pth')):
            return True, ''
        return False, 'not a complete sharded checkpoint folder'
    try:
        ckpt = safe_torch_load(path)
    except (CheckpointError, OSError) as err:
        return False, str(err).split('. ')[0]
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get('state_dict'), Mapping):
        return False, 'no state_dict in it'
    bad = []

    def walk(obj, name):
        if isinstance(obj, torch.Tensor):
            if (obj.is_floating_point() or obj.is_complex()) and obj.numel() and \
                    not bool(torch.isfinite(obj).all()):
                bad.append(name)
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f'{name}.{k}' if name else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f'{name}.{i}')

    walk(ckpt['state_dict'], 'state_dict')
    walk(ckpt.get('optimizer', {}), 'optimizer')
    if bad:
        return False, f'{len(bad)} tensor(s) hold NaN / Inf (e.g. {bad[0]})'
    return True, ''


def find_resume_checkpoint(work_dir: str, checkpoint_dirs: Iterable[str] = (),
                           filename_tmpls: Iterable[str] = ('iter_{}.pth', 'epoch_{}.pth')
                           ) -> Tuple[Optional[str], List[str]]:
    """The checkpoint ``--resume`` (without a path) should continue from.

    The file ``<work_dir>/last_checkpoint`` names, when that is an existing checkpoint.
    Otherwise (no pointer, an empty one, or one naming a missing file) the newest
    checkpoint of ``work_dir`` / ``checkpoint_dirs`` (highest number in one of
    ``filename_tmpls``) that is readable and whose weights and optimizer state are
    finite (sharded folders: complete ones).

    Returns:
        tuple: ``(path or None, notes)``; ``notes`` says why the pointer was not used and
        which newer candidates were skipped, for the log.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    notes: List[str] = []
    if osp.isfile(pointer):
        with open(pointer, encoding='utf-8', errors='replace') as f:
            named = f.read().strip()
        if named and (osp.isfile(named) or osp.isdir(named)):
            return named, notes
        notes.append(f'"{pointer}" is empty' if not named else
                     f'"{pointer}" names "{named}", which does not exist')
    patterns = [re.compile('^' + re.escape(t).replace(r'\{\}', r'(\d+)') + '$')
                for t in filename_tmpls]
    candidates = []
    for folder in [work_dir, *checkpoint_dirs]:
        if not folder or not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            for pattern in patterns:
                match = pattern.match(name)
                if match:
                    path = osp.join(folder, name)
                    candidates.append((int(match.group(1)), osp.getmtime(path), path))
    for _, _, path in sorted(set(candidates), reverse=True):
        usable, why = _finite_checkpoint(path)
        if usable:
            return path, notes
        notes.append(f'skipped "{path}": {why}')
    return None, notes


# ------------------------------------------------------------------ checkpoint hook
def _remove_checkpoint(backend, path: str) -> None:
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):  # sharded (DCP) checkpoints are folders
        backend.rmtree(path)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` that never replaces good checkpoints with bad ones.

    Every config's ``default_hooks.checkpoint=dict(type='CheckpointHook', ...)`` gets
    this class once dino_mm is imported (it replaces the ``CheckpointHook`` entry of
    MMEngine's root registry, which every scope falls back to). Differences:

    * **Finite weights only.** Before a checkpoint is written, the parameters, buffers
      and optimizer state are checked (on all ranks). With a NaN / Inf anywhere, nothing
      is written, rotated or pointed at, and training stops with
      :class:`NonFiniteWeightsError` naming the iteration and the last good file. (The
      loss can stay finite while an update makes the weights NaN.)
    * **Write first, rotate after.** The new file is written (atomically), then
      ``last_checkpoint`` is replaced atomically, and only then are checkpoints beyond
      ``max_keep_ckpts`` removed: a failed write (disk full) loses nothing, and
      ``last_checkpoint`` always names a complete file.
    * **Plain files.** The checkpoint is encoded as tensors and builtin containers
      (:func:`to_plain`, as :class:`PlainCheckpointHook` does) before it is written, so it
      loads with ``weights_only=True``.
    * **Loads must fit the model.** ``load_from`` / ``--resume`` files that fill less
      than ``min_loaded_fraction`` of the model are refused (MMEngine only warns), and
      a model that is only evaluated (``tools/test.py``) must get every parameter.

    Args:
        check_finite (bool): Refuse to save non-finite weights. Defaults to True.
        min_loaded_fraction (float): See :func:`check_checkpoint_matches_model`.
            Defaults to 0.5.
        strict_test_load (bool): In test / val runs, fail when a parameter is missing
            from the loaded checkpoint. Defaults to True.
        clean_stale_tmp (bool): Before training, remove the temporary files / folders
            that killed saves left in the work dir and the checkpoint dir (see
            :func:`clean_stale_temporary_files`), logging each. Defaults to True.
        **kwargs: The arguments of :class:`mmengine.hooks.CheckpointHook`.
    """

    def __init__(self, *args, check_finite: bool = True, min_loaded_fraction: float = 0.5,
                 strict_test_load: bool = True, clean_stale_tmp: bool = True,
                 **kwargs) -> None:
        # Anything a save of this run writes is newer: older temporaries are stale.
        self._created = time.time()
        self.clean_stale_tmp = clean_stale_tmp
        super().__init__(*args, **kwargs)
        if not 0.0 <= float(min_loaded_fraction) <= 1.0:
            raise ValueError(f'CheckpointHook: min_loaded_fraction must be in [0, 1], got '
                             f'{min_loaded_fraction!r}.')
        self.check_finite = check_finite
        self.min_loaded_fraction = float(min_loaded_fraction)
        self.strict_test_load = strict_test_load

    def before_train(self, runner) -> None:
        super().before_train(runner)  # resolves self.out_dir
        if not (self.clean_stale_tmp and is_main_process()):
            return
        if not isinstance(self.file_backend, LocalBackend):
            return
        for path in clean_stale_temporary_files([runner.work_dir, self.out_dir],
                                                older_than=self._created):
            runner.logger.warning(
                f'Removed "{path}": a temporary file of a checkpoint save that was killed '
                f'before it completed (the checkpoints themselves are untouched).')

    # ------------------------------------------------------------------ saving
    def _last_good_checkpoint(self, runner) -> Optional[str]:
        candidates = [self.last_ckpt]
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        if osp.isfile(pointer):
            with open(pointer) as f:
                candidates.append(f.read().strip())
        for path in candidates:
            if path and self.file_backend.exists(path):
                return path
        return None

    def _refuse_non_finite(self, runner, step: int, what: str) -> None:
        bad = find_non_finite_tensors(runner.model, getattr(runner, 'optim_wrapper', None))
        n_bad = torch.tensor([len(bad)], dtype=torch.float64)
        if get_dist_info()[1] > 1:  # every rank must stop, also those whose shard is fine
            all_reduce(n_bad, op='sum')
        if n_bad.item() == 0:
            return
        when = (f'epoch {step} (iteration {runner.iter})' if self.by_epoch else
                f'iteration {step}')
        last = self._last_good_checkpoint(runner)
        listed = ', '.join(bad[:5]) + (f', ... ({len(bad)} on this rank)'
                                       if len(bad) > 5 else '')
        if last is not None:
            resume = (f'The last checkpoint with finite weights is "{last}" '
                      f'("last_checkpoint" points at it): resume from it (`--resume {last}`) '
                      f'with a lower learning rate, a longer warm-up, gradient clipping '
                      f'or fp32.')
        else:
            resume = ('No checkpoint was written before, so there is nothing to resume '
                      'from: restart with a lower learning rate, a longer warm-up, gradient '
                      'clipping or fp32.')
        raise NonFiniteWeightsError(
            f'Non-finite weights at {when}: {int(n_bad.item())} tensor(s) of the model / '
            f'optimizer state hold NaN or Inf ({listed or "on another rank"}). The loss '
            f'may still be finite: the weights diverged in an update. {what} was NOT '
            f'written and no checkpoint was removed. {resume}')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Encode the checkpoint as tensors and builtin containers (:func:`to_plain`).

        The hook priority is VERY_LOW, so hooks that add entries (e.g. an EMA state) run
        first and their entries are encoded too.
        """
        parts = getattr(self, '_partitioned_parts', None)
        if parts:
            for part in parts.values():
                checkpoint['state_dict'].update(part['state_dict'])
            checkpoint['partitioned_students'] = {
                name: dict(optimizer=part['optimizer']) for name, part in parts.items()}
            self._partitioned_parts = None
        plain = to_plain(checkpoint)
        checkpoint.clear()
        checkpoint.update(plain)

    def _save_checkpoint_with_step(self, runner, step, meta):
        filename = self.filename_tmpl.format(step)
        path = self.file_backend.join_path(self.out_dir, filename)
        if self.check_finite:
            self._refuse_non_finite(runner, step, f'The checkpoint "{path}"')

        hub = runner.message_hub
        saved_info = {k: hub.runtime_info[k] for k in ('keep_ckpt_ids', 'last_ckpt')
                      if k in hub.runtime_info}
        drop, keep = [], None
        if self.max_keep_ckpts > 0:
            keep = list(self.keep_ckpt_ids)
            if not keep or keep[-1] != step:  # (a best-checkpoint save repeats the step)
                keep.append(step)
                drop = keep[:-self.max_keep_ckpts]
                keep = keep[-self.max_keep_ckpts:]
            # The list goes into the checkpoint itself, so that a resumed run rotates on.
            hub.update_info('keep_ckpt_ids', list(keep))
        hub.update_info('last_ckpt', path)
        # Rank-partitioned models hold a part of the weights per rank group; gathering them
        # is collective, so it happens here, where every rank is (save_checkpoint runs on
        # rank 0 only), and before_save_checkpoint merges the parts into the checkpoint.
        gather = getattr(_unwrap_model(runner.model), 'gather_partitioned_state', None)
        self._partitioned_parts = gather(runner.optim_wrapper) if callable(gather) else None
        try:
            runner.save_checkpoint(
                self.out_dir, filename, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        except BaseException as err:
            for k in ('keep_ckpt_ids', 'last_ckpt'):
                if k in saved_info:
                    hub.update_info(k, saved_info[k])
                else:
                    hub.runtime_info.pop(k, None)
            if isinstance(err, OSError):
                last = self._last_good_checkpoint(runner)
                raise CheckpointError(
                    f'Could not write checkpoint "{path}" ({type(err).__name__}: {err}). '
                    f'No checkpoint was removed and "last_checkpoint" still points at '
                    f'{last and repr(last) or "the previous checkpoint (none yet)"}. Free '
                    f'disk space (or set default_hooks.checkpoint.out_dir to another '
                    f'disk) and continue with `--resume`.') from err
            raise

        self.last_ckpt = path
        if keep is not None:
            self.keep_ckpt_ids = deque(keep, self.max_keep_ckpts)
        # Model-parallel saves involve every rank; the bookkeeping is rank 0's.
        if not is_main_process():
            return
        atomic_write_bytes(path.encode('utf-8'), osp.join(runner.work_dir, 'last_checkpoint'))
        for old in drop:
            _remove_checkpoint(self.file_backend,
                               self.file_backend.join_path(self.out_dir,
                                                           self.filename_tmpl.format(old)))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if self.save_best and self.check_finite:
            step = runner.epoch if self.by_epoch else runner.iter
            self._refuse_non_finite(runner, step, 'The best checkpoint')
        super()._save_best_checkpoint(runner, metrics)

    # ------------------------------------------------------------------ loading
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        super().after_load_checkpoint(runner, checkpoint)
        if not isinstance(checkpoint, Mapping):
            return
        select = getattr(_unwrap_model(runner.model), 'select_partitioned_state', None)
        if callable(select):
            from dino_mm.engine.hooks.stage_hooks import _load_from_and_resume
            select(checkpoint, resuming=_load_from_and_resume(runner)[1])
        meta = checkpoint.get('meta')
        if isinstance(meta, Mapping) and meta.get('format') == 'dino_mm.dcp':
            return  # sharded: loaded by DCP against the model's own keys, strictly
        state = checkpoint.get('state_dict', checkpoint)
        if not isinstance(state, Mapping):
            state = {}
        # Runner.load_checkpoint strips 'module.' (revise_keys) before loading.
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
        source = (_loaded_from(checkpoint) or getattr(runner, '_load_from', None)
                  or 'the loaded checkpoint')
        evaluating = not isinstance(getattr(runner, '_train_loop', None), BaseLoop)
        check_checkpoint_matches_model(
            runner.model, state, str(source), min_loaded_fraction=self.min_loaded_fraction,
            require_all_parameters=evaluating and self.strict_test_load)


def register_safe_checkpointing() -> None:
    """Install the atomic local backend and the safe local checkpoint loader."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local_safe, force=True)
    # `type='CheckpointHook'` in any scope (dino_mm, mmseg, mmdet, mmpretrain) falls back
    # to MMEngine's root registry: serve the safe hook there.
    MMENGINE_HOOKS.register_module(name='CheckpointHook', module=SafeCheckpointHook,
                                   force=True)


register_safe_checkpointing()
