"""Numeric precision of inference and training forwards: one place for every code path.

Feature extraction (:func:`dino_mm.evaluation.extract_features`, the frozen-feature
evaluation models, ``tools/extract_features.py``, the ``tools/analysis`` feature tools),
``tools/test.py --amp`` and ``tools/train.py --amp`` on CPU all ask this module which
precision to run in and enter its autocast context, so they agree on what ``'auto'``
means and log it the same way.

Precision names:

* ``'fp32'``: no autocast. Inside an outer autocast region it is switched *off*, so an
  explicit ``'fp32'`` always means full precision.
* ``'bf16'``: ``torch.autocast(dtype=torch.bfloat16)`` on CPU or CUDA. bfloat16 keeps
  the 8-bit exponent of float32 (only the mantissa is shorter), so activations and
  gradients neither overflow nor underflow where fp32 would not, and training needs no
  loss scaling.
* ``'fp16'``: ``torch.autocast(dtype=torch.float16)``, CUDA only (the official DINOv2
  evaluations run the backbone in fp16 on GPUs).
* ``'auto'``: bf16 on a CPU with native bf16 instructions and on CUDA (fp16 on GPUs
  without bf16 units), fp32 elsewhere.

Native bf16 on CPU means the instruction-set extensions that compute bf16 dot products in
hardware: AVX512-BF16 or AMX-BF16 on x86-64 (``avx512_bf16`` / ``amx_bf16`` in the
``flags`` line of ``/proc/cpuinfo``), the BF16 extension on Arm (``bf16`` in its
``Features`` line). Without them PyTorch still runs bf16 autocast, but by converting to
fp32 and back around every matrix product, which is slower than plain fp32; ``'auto'``
then stays in fp32 and an explicit ``'bf16'`` logs a warning. On a ViT-B/14 at 224 px a
CPU with AVX512-BF16 runs the bf16 forward about 2-3x faster than fp32 (see
``benchmarks/bf16_cpu.py``). Where ``/proc/cpuinfo`` does not exist (macOS, Windows) no
native bf16 is assumed.

The final LayerNorm of the DINO backbones runs in fp32 under autocast (autocast keeps
normalisation layers in fp32), and every feature path casts its output to fp32, so
downstream code (k-NN, logistic regression, stored shards) always sees fp32 arrays.
"""
import contextlib
import functools
import logging
from typing import Iterator, Optional, Set, Tuple, Union

import torch
from mmengine.logging import print_log

__all__ = ['PRECISIONS', 'PRECISION_DTYPES', 'check_precision', 'cpu_bf16_flags',
           'cpu_has_native_bf16', 'resolve_precision', 'precision_autocast']

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
PRECISION_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

# Other spellings accepted for the same settings (the dtype names of torch / mmengine).
_ALIASES = {'float32': 'fp32', 'float': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16',
            'half': 'fp16'}
# CPU feature flags that mean hardware bf16 arithmetic (x86-64, then Arm).
_NATIVE_BF16_FLAGS = ('avx512_bf16', 'amx_bf16', 'bf16')

DeviceLike = Union[str, torch.device, None]

_logged: Set[Tuple] = set()


def check_precision(precision: Union[str, torch.dtype, None], where: str = 'precision') -> str:
    """Validate a precision setting and return its canonical name.

    Args:
        precision (str | torch.dtype | None): One of :data:`PRECISIONS`, a dtype alias
            (``'bfloat16'``, ``'float16'``, ``'float32'``) or a ``torch.dtype``; None means
            ``'fp32'``.
        where (str): What the value was given as (config key, CLI flag), for the error.

    Returns:
        str: ``'auto'``, ``'fp32'``, ``'bf16'`` or ``'fp16'``.

    Raises:
        ValueError: For any other value.
    """
    if precision is None:
        return 'fp32'
    if isinstance(precision, torch.dtype):
        for name, dtype in PRECISION_DTYPES.items():
            if precision == dtype:
                return name
    elif isinstance(precision, str):
        name = precision.strip().lower()
        name = _ALIASES.get(name, name)
        if name in PRECISIONS:
            return name
    raise ValueError(f'{where}={precision!r} is not a precision setting; use one of '
                     f"{', '.join(repr(p) for p in PRECISIONS)} ('auto': bf16 on a CPU "
                     'with native bf16 or on CUDA, else fp32).')


@functools.lru_cache(maxsize=None)
def cpu_bf16_flags(cpuinfo: str = '/proc/cpuinfo') -> Tuple[str, ...]:
    """The native-bf16 feature flags of this CPU, read from ``/proc/cpuinfo`` (Linux).

    Args:
        cpuinfo (str): The file to read. Defaults to '/proc/cpuinfo'.

    Returns:
        tuple[str]: E.g. ``('avx512_bf16', 'amx_bf16')``; empty without native bf16 or
        where the file cannot be read.
    """
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return ()
    found = set()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip().lower() in ('flags', 'features'):
            found.update(value.split())
    return tuple(flag for flag in _NATIVE_BF16_FLAGS if flag in found)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (see the module docstring)."""
    return bool(cpu_bf16_flags())


def _cuda_has_bf16() -> bool:
    try:  # emulated bf16 (pre-Ampere GPUs) is slower than fp16, so it does not count
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation argument
        return bool(torch.cuda.is_bf16_supported())


def _device_type(device: DeviceLike) -> str:
    if device is None:
        return 'cpu'
    if isinstance(device, str) and device in ('cpu', 'cuda'):
        return device
    return torch.device(device).type


def _log_once(key: Tuple, message: str, level: int = logging.INFO) -> None:
    if key not in _logged:
        _logged.add(key)
        print_log(message, logger='current', level=level)


def resolve_precision(precision: Union[str, torch.dtype, None], device: DeviceLike = 'cpu',
                      owner: Optional[str] = None) -> str:
    """The concrete precision (``'fp32'``, ``'bf16'`` or ``'fp16'``) to run on ``device``.

    Args:
        precision (str | torch.dtype | None): A setting accepted by :func:`check_precision`.
        device (str | torch.device): Where the forward runs. Defaults to 'cpu'.
        owner (str, optional): Who asks (a class or tool name). When given, the choice is
            logged once per owner, setting and device. Defaults to None (silent).

    Returns:
        str: ``'fp32'``, ``'bf16'`` or ``'fp16'``.

    Raises:
        ValueError: ``'fp16'`` on CPU, or bf16 / fp16 on a device other than CPU / CUDA.
    """
    requested = check_precision(precision, f'{owner}: precision' if owner else 'precision')
    device_type = _device_type(device)
    if requested == 'auto':
        if device_type == 'cuda':
            resolved = 'bf16' if _cuda_has_bf16() else 'fp16'
            why = 'CUDA' + ('' if resolved == 'bf16' else ' without bf16 units')
        elif device_type == 'cpu' and cpu_has_native_bf16():
            resolved = 'bf16'
            why = f'this CPU has native bf16 ({", ".join(cpu_bf16_flags())})'
        else:
            resolved = 'fp32'
            why = (f'this CPU has no native bf16 ({" / ".join(_NATIVE_BF16_FLAGS[:2])} '
                   'flags absent in /proc/cpuinfo)' if device_type == 'cpu'
                   else f'no reduced-precision autocast on {device_type}')
    else:
        resolved = requested
        why = 'set explicitly'
    if resolved != 'fp32' and device_type not in ('cpu', 'cuda'):
        raise ValueError(f'{owner or "precision"}: {resolved} autocast runs on CPU or CUDA, '
                         f'not on {device_type}; use precision=\'fp32\'.')
    if resolved == 'fp16' and device_type == 'cpu':
        raise ValueError(f"{owner or 'precision'}: precision='fp16' is for CUDA; on CPU use "
                         "'bf16' (or 'auto').")
    if owner is not None:
        _log_once((owner, requested, resolved, device_type),
                  f'{owner}: running in {resolved} on {device_type} '
                  f'(precision={requested!r}: {why})')
        if resolved == 'bf16' and device_type == 'cpu' and not cpu_has_native_bf16():
            _log_once((owner, 'slow-bf16'),
                      f'{owner}: bf16 on a CPU without native bf16 instructions (no '
                      'avx512_bf16 / amx_bf16 in /proc/cpuinfo): PyTorch emulates it and '
                      "this runs SLOWER than fp32; use precision 'fp32' (or 'auto') here.",
                      level=logging.WARNING)
    return resolved


@contextlib.contextmanager
def precision_autocast(precision: Union[str, torch.dtype, None], device: DeviceLike = 'cpu',
                       owner: Optional[str] = None) -> Iterator[str]:
    """Autocast region for ``precision`` on ``device``; yields the resolved precision.

    ``'fp32'`` (also when ``'auto'`` resolves to it) switches autocast *off* inside the
    region, so an outer autocast does not leak into an explicitly fp32 computation.

    Args:
        precision (str | torch.dtype | None): See :func:`check_precision`.
        device (str | torch.device): Where the forward runs. Defaults to 'cpu'.
        owner (str, optional): Logged with the choice (see :func:`resolve_precision`).

    Yields:
        str: ``'fp32'``, ``'bf16'`` or ``'fp16'``.
    """
    resolved = resolve_precision(precision, device, owner)
    device_type = _device_type(device)
    if device_type not in ('cpu', 'cuda'):  # resolve_precision allowed fp32 only
        yield resolved
        return
    with torch.autocast(device_type=device_type, dtype=PRECISION_DTYPES[resolved],
                        enabled=resolved != 'fp32'):
        yield resolved
