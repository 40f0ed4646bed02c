"""Rendezvous port of SLURM jobs, derived from the job id so that jobs sharing a node differ.

Every task of a ``--launcher slurm`` job meets on ``MASTER_ADDR:MASTER_PORT``. With one fixed
default (PyTorch's 29500) two jobs that land on the same first node try to bind the same port
and the second one fails (``EADDRINUSE``) or, worse, joins the other job's store. The default
here is a function of the SLURM job id instead:

* a plain job ``J`` gets ``PORT_BASE + J % PORT_SPAN``: consecutive (i.e. concurrently
  scheduled) jobs never share a port;
* a task ``I`` of job array ``A`` (``SLURM_ARRAY_JOB_ID=A``, ``SLURM_ARRAY_TASK_ID=I``, or a
  submitit id ``"A_I"``) gets ``PORT_BASE + (A + ARRAY_STRIDE * (I + 1)) % PORT_SPAN``. The
  stride is prime, so coprime to the span: the tasks of one array all differ (up to 19000
  of them), and tasks 0-92 also differ from every plain job within 200 ids of ``A`` (the
  stride was chosen to make that run of indices as long as possible).

Ports stay in ``[10000, 29000)``: above the well-known ports and the low range where cluster
daemons usually listen, below PyTorch's own defaults (29400 elastic rendezvous, 29500
``MASTER_PORT``) and below Linux's ephemeral range (32768+), where the OS picks the ports of
outgoing connections.

A port the user sets always wins: ``MASTER_PORT`` (what torch reads) and, for the shell
launchers, ``PORT`` (their own knob, as in ``tools/dist_train.sh``; it beats ``MASTER_PORT``
there). The module uses only the standard library and runs as a script, which is how
``tools/slurm_train.sh`` / ``tools/slurm_test.sh`` compute the port without importing torch::

    python dino_mm/utils/slurm.py master-port   # prints the port, or nothing if unknown
"""
import os
import re
import sys
from typing import Mapping, MutableMapping, Optional, Sequence, Tuple

__all__ = [
    'PORT_BASE', 'PORT_SPAN', 'ARRAY_STRIDE', 'FALLBACK_PORT', 'parse_job_id',
    'derive_master_port', 'resolve_master_port', 'setdefault_master_port'
]

PORT_BASE = 10000
PORT_SPAN = 19000
ARRAY_STRIDE = 7883  # prime; see the module docstring
FALLBACK_PORT = 29500  # torch's default, used only when no job id is known at all

# "123", "123_4" (array task, submitit's ``job_id``), "123_[1-3]" / "123_[1,5%2]" (a pending
# array as squeue prints it: no single task), optionally with a step suffix ("123_4.0").
_JOB_ID = re.compile(r'^(?P<base>\d+)(?:_(?:(?P<index>\d+)|\[[0-9,\-%:]+\]))?(?:\.\w+)?$')


def parse_job_id(job_id) -> Tuple[int, Optional[int]]:
    """Split a SLURM / submitit job id into the numeric job id and the array task index.

    Args:
        job_id (str | int): ``"123"``, ``"123_4"``, ``"123_[1-3]"`` (index None: a whole
            pending array), ``"123_4.0"`` (a job step) or an int.

    Returns:
        tuple[int, int | None]: ``(base_id, array_index)``.

    Raises:
        ValueError: ``job_id`` has none of these forms.
    """
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        if job_id < 0:
            raise ValueError(f'SLURM job id must be >= 0, got {job_id}.')
        return job_id, None
    match = _JOB_ID.match(str(job_id).strip())
    if match is None:
        raise ValueError(
            f'Cannot parse SLURM job id {job_id!r}: expected "<id>", "<id>_<array index>" or '
            '"<id>_[<range>]" (e.g. "123", "123_4", "123_[1-3]"). Set MASTER_PORT to choose '
            'the rendezvous port yourself.')
    index = match.group('index')
    return int(match.group('base')), (int(index) if index is not None else None)


def derive_master_port(job_id, array_task_id=None) -> int:
    """The default rendezvous port of a job (see the module docstring for the formula).

    Args:
        job_id (str | int): Job id, possibly with an array index (``"123_4"``).
        array_task_id (str | int, optional): Array task index, when it is not part of
            ``job_id`` (``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_JOB_ID``).

    Returns:
        int: A port in ``[PORT_BASE, PORT_BASE + PORT_SPAN)``.
    """
    base, index = parse_job_id(job_id)
    if array_task_id is not None and str(array_task_id).strip() != '':
        task = str(array_task_id).strip()
        if not task.isdigit():
            raise ValueError(f'SLURM array task id must be a non-negative integer, got '
                             f'{array_task_id!r}.')
        if index is not None and index != int(task):
            raise ValueError(f'SLURM job id {job_id!r} names array task {index} but the '
                             f'array task id is {array_task_id!r}.')
        index = int(task)
    key = base if index is None else base + ARRAY_STRIDE * (index + 1)
    return PORT_BASE + key % PORT_SPAN


def _explicit_port(environ: Mapping[str, str], name: str) -> Optional[int]:
    value = environ.get(name, '').strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f'{name}={environ[name]!r} is not a TCP port: set {name} to an '
                         'integer in 1..65535, or unset it to derive the port from the SLURM '
                         'job id.')
    return int(value)


def resolve_master_port(environ: Optional[Mapping[str, str]] = None,
                        explicit: Sequence[str] = ('MASTER_PORT', ),
                        job_id=None) -> Optional[int]:
    """The rendezvous port: a user-set one, else the one derived from the job id.

    Args:
        environ (Mapping, optional): Environment to read. Defaults to ``os.environ``.
        explicit (Sequence[str]): Variables holding a user-set port, in order of
            precedence. Defaults to ``('MASTER_PORT',)``.
        job_id (str | int, optional): Job id to derive from (submitit's
            ``JobEnvironment.job_id``); by default ``SLURM_ARRAY_JOB_ID`` +
            ``SLURM_ARRAY_TASK_ID`` when both are set, else ``SLURM_JOB_ID``.

    Returns:
        int | None: The port, or None when nothing is set and no job id is known.
    """
    environ = os.environ if environ is None else environ
    for name in explicit:
        port = _explicit_port(environ, name)
        if port is not None:
            return port
    if job_id is not None and str(job_id).strip():
        return derive_master_port(job_id)
    array_id = environ.get('SLURM_ARRAY_JOB_ID', '').strip()
    task_id = environ.get('SLURM_ARRAY_TASK_ID', '').strip()
    if array_id and task_id:
        return derive_master_port(array_id, task_id)
    plain = environ.get('SLURM_JOB_ID', '').strip() or environ.get('SLURM_JOBID', '').strip()
    return derive_master_port(plain) if plain else None


def setdefault_master_port(environ: Optional[MutableMapping[str, str]] = None,
                           job_id=None) -> int:
    """Set ``MASTER_PORT`` in ``environ`` unless the user did; return the port in use.

    Falls back to :data:`FALLBACK_PORT` when no job id is known (a run outside SLURM).

    Args:
        environ (MutableMapping, optional): Defaults to ``os.environ``.
        job_id (str | int, optional): See :func:`resolve_master_port`.
    """
    environ = os.environ if environ is None else environ
    port = resolve_master_port(environ, job_id=job_id)
    port = FALLBACK_PORT if port is None else port
    environ['MASTER_PORT'] = str(port)
    return port


def _main(argv: Sequence[str]) -> int:
    if list(argv) != ['master-port']:
        print('usage: python dino_mm/utils/slurm.py master-port', file=sys.stderr)
        return 2
    try:
        port = resolve_master_port(os.environ, explicit=('PORT', 'MASTER_PORT'))
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    if port is not None:
        print(port)
    return 0


if __name__ == '__main__':
    sys.exit(_main(sys.argv[1:]))
