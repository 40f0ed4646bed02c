"""Submit ``tools/train.py`` to SLURM with submitit (multi-node, requeue on preemption).

    python tools/submitit_train.py CONFIG --nodes 4 --gpus-per-node 8 --partition PART \\
        [--timeout-min 4320] [--work-dir DIR] [--cfg-options k=v ...]

One task per GPU; every task runs ``tools/train.py CONFIG --launcher slurm`` (rendezvous from
the SLURM variables). On preemption or time-out submitit requeues the job, which resumes
from the last complete checkpoint of the work dir (``--resume``). Needs ``pip install
submitit`` (not a dino_mm requirement).
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


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
        import submitit
        env = submitit.JobEnvironment()
        os.environ.setdefault('MASTER_ADDR', env.hostnames[0])
        os.environ.setdefault('MASTER_PORT', str(29500 + int(env.job_id) % 1000))
        sys.path.insert(0, osp.join(ROOT, 'tools'))
        sys.path.insert(0, ROOT)
        from train import main
        main(self.train_argv())

    def checkpoint(self):
        import submitit
        return submitit.helpers.DelayedSubmission(Trainer(self.args, self.work_dir, True))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import submitit
    except ImportError:
        print('error: submitit is not installed; `pip install submitit`, or use '
              'tools/slurm_train.sh', file=sys.stderr)
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
