"""Submit ``tools/train.py`` to SLURM with submitit (multi-node, requeue on preemption).

    python tools/submitit_train.py CONFIG --nodes 4 --gpus-per-node 8 --partition PART \\
        [--timeout-min 4320] [--work-dir DIR] [--cfg-options k=v ...]

One task per GPU; every task runs ``tools/train.py CONFIG --launcher slurm`` (rendezvous from
the SLURM variables). On preemption or time-out submitit requeues the job, which resumes
from the last complete checkpoint of the work dir (``--resume``). Needs ``pip install
submitit`` (not a dino_mm requirement).

Rendezvous: ``MASTER_ADDR`` is the job's first host and ``MASTER_PORT`` is derived from the
job id (``dino_mm/utils/slurm.py``), including the array index of array jobs (submitit ids
like ``"123_4"``), so jobs and array tasks sharing a node do not collide; a ``MASTER_PORT``
set in the environment wins.
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from dino_mm.utils.slurm import setdefault_master_port  # noqa: E402

_NO_SUBMITIT = ('submitit is not installed; `pip install submitit` (listed in '
                'requirements/optional.txt), or use tools/slurm_train.sh')


def import_submitit():
    """Import submitit, or raise an ImportError that says how to install it."""
    try:
        import submitit
    except ImportError as exc:
        raise ImportError(_NO_SUBMITIT) from exc
    return submitit


def set_rendezvous_env(job_id, hostnames, environ=None) -> dict:
    """Point ``MASTER_ADDR`` / ``MASTER_PORT`` of one task at the job's first host.

    Values already in the environment win. ``job_id`` is submitit's
    ``JobEnvironment.job_id``: ``"123"`` or, for an array task, ``"123_4"``; the port comes
    from the numeric id and the array index (:func:`dino_mm.utils.slurm.derive_master_port`).

    Args:
        job_id (str): The job id.
        hostnames (Sequence[str]): Hosts of the job, first one = rank 0's.
        environ (MutableMapping, optional): Defaults to ``os.environ``.

    Returns:
        dict: The ``MASTER_ADDR`` and ``MASTER_PORT`` in use.
    """
    environ = os.environ if environ is None else environ
    if not hostnames:
        raise RuntimeError(f'submitit job {job_id}: the job has no host names; cannot choose '
                           'MASTER_ADDR (set it in the environment).')
    environ.setdefault('MASTER_ADDR', hostnames[0])
    setdefault_master_port(environ, job_id=job_id)
    return dict(MASTER_ADDR=environ['MASTER_ADDR'], MASTER_PORT=environ['MASTER_PORT'])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--nodes', type=int, default=1)
    p.add_argument('--gpus-per-node', type=int, default=8)
    p.add_argument('--cpus-per-task', type=int, default=10)
    p.add_argument('--mem-gb', type=int, default=None, help='per node; default: all')
    p.add_argument('--partition', default=None)
    p.add_argument('--account', default=None)
    p.add_argument('--qos', default=None)
    p.add_argument('--timeout-min', type=int, default=4320)
    p.add_argument('--job-name', default=None)
    p.add_argument('--work-dir', default=None)
    p.add_argument('--cfg-options', nargs='+', default=[])
    return p.parse_args(argv)


class Trainer:
    """Picklable job body; ``checkpoint`` makes submitit requeue with ``--resume``."""

    def __init__(self, args: argparse.Namespace, work_dir: str, resume: bool = False) -> None:
        self.args, self.work_dir, self.resume = args, work_dir, resume

    def train_argv(self) -> list:
        argv = [self.args.config, '--launcher', 'slurm', '--work-dir', self.work_dir]
        if self.resume or osp.isfile(osp.join(self.work_dir, 'last_checkpoint')):
            argv.append('--resume')
        if self.args.cfg_options:
            argv += ['--cfg-options'] + list(self.args.cfg_options)
        return argv

    def __call__(self) -> None:
        env = import_submitit().JobEnvironment()
        set_rendezvous_env(env.job_id, env.hostnames)
        sys.path.insert(0, osp.join(ROOT, 'tools'))
        from train import main
        main(self.train_argv())

    def checkpoint(self):
        submitit = import_submitit()
        return submitit.helpers.DelayedSubmission(Trainer(self.args, self.work_dir, True))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        submitit = import_submitit()
    except ImportError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    name = args.job_name or osp.splitext(osp.basename(args.config))[0]
    work_dir = osp.abspath(args.work_dir or osp.join('work_dirs', name))
    executor = submitit.AutoExecutor(folder=osp.join(work_dir, 'submitit', '%j'))
    params = dict(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                  tasks_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                  timeout_min=args.timeout_min, name=name, slurm_signal_delay_s=120)
    if args.mem_gb:
        params['mem_gb'] = args.mem_gb
    if args.partition:
        params['slurm_partition'] = args.partition
    extra = {k: v for k, v in (('account', args.account), ('qos', args.qos)) if v}
    if extra:
        params['slurm_additional_parameters'] = extra
    executor.update_parameters(**params)
    job = executor.submit(Trainer(args, work_dir))
    print(f'submitted job {job.job_id}; logs in {osp.join(work_dir, "submitit", job.job_id)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
