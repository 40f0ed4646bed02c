"""Train a dino_mm model (pretraining, linear probe, segmentation, depth, detection).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]] [--amp]
                                 [--cfg-options k=v ...] [--launcher none|pytorch|slurm]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a dino_mm model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from PATH, or from the latest checkpoint in the work dir when no '
        'path is given')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed precision training: fp16 with dynamic '
                        'loss scaling on GPUs, bf16 autocast without loss scaling on CPU')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual batch size')
    parser.add_argument(
        '--keep-schedule-lengths', action='store_true',
        help='when train_cfg.max_iters is overridden, keep the iteration counts of the lr / '
        'wd / teacher schedules as written (by default they are scaled with max_iters)')
    parser.add_argument('--no-pin-memory', action='store_true',
                        help='disable pin_memory in the dataloaders')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='disable persistent_workers in the dataloaders')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. train_cfg.max_iters=10 '
        'model.backbone.arch=dinov2_vits14. Keys are checked before training: a top-level '
        'key the config lacks, or an argument the class of a typed entry (hook, model part, '
        'scheduler) does not take, is an error. Prefix a key with "+" to add a new entry '
        'on purpose (+my_key=1).')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def merge_args(cfg, args):
    from dino_mm.engine.runner_utils import apply_common_args
    apply_common_args(cfg, args.config, args.work_dir, args.launcher)
    if args.amp:
        from mmengine.device import get_device
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if get_device() == 'cpu':
            # MMEngine's AmpOptimWrapper asserts an accelerator: bf16 autocast without
            # loss scaling instead (see dino_mm/engine/optimizers/bf16_optim_wrapper.py).
            from dino_mm.engine.config_checks import ConfigError
            from dino_mm.engine.optimizers import cpu_amp_optim_wrapper_cfg
            try:
                cfg.optim_wrapper = cpu_amp_optim_wrapper_cfg(cfg.optim_wrapper)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        elif optim_wrapper in ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper'):
            print('AMP training is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None
    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', dict(base_batch_size=256))
        cfg.auto_scale_lr.enable = True

    def set_loader_flag(key, value):
        for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if cfg.get(name) is not None and key in cfg[name]:
                cfg[name][key] = value

    if args.no_pin_memory:
        set_loader_flag('pin_memory', False)
    if args.no_persistent_workers:
        set_loader_flag('persistent_workers', False)
    # --cfg-options, then the lr scaling rule and the schedule lengths follow the batch
    # size / length of the run
    from dino_mm.engine.schedulers import apply_run_overrides
    apply_run_overrides(cfg, args.cfg_options, keep_lengths=args.keep_schedule_lengths)
    # a launched DINO algorithm keeps its per-module clipping and finite stop under DDP
    from dino_mm.engine.model_wrappers import ensure_dino_ddp_wrapper
    ensure_dino_ddp_wrapper(cfg)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from dino_mm.engine.runner_utils import setup_cpu_distributed
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(args.config)
    from dino_mm.engine.config_checks import ConfigError, check_training_length
    try:
        cfg = merge_args(cfg, args)
        check_training_length(cfg)
    except ConfigError as err:
        print(f'error: {args.config}: {err}', file=sys.stderr)
        raise SystemExit(2) from None
    from dino_mm.utils.scope import add_prefix_scopes
    add_prefix_scopes(cfg)  # 'mmseg.X' is built in the mmseg scope, etc.
    locked = lock_work_dir_or_exit(cfg)  # before anything is written into the work dir
    try:
        if args.resume == 'auto':  # under the lock: no other run writes checkpoints now
            from dino_mm.engine.runner_utils import resolve_auto_resume
            resolve_auto_resume(cfg)
        setup_cpu_distributed(cfg)
        if 'runner_type' not in cfg:
            runner = Runner.from_cfg(cfg)
        else:
            from mmengine.registry import RUNNERS
            runner = RUNNERS.build(cfg)
        runner.train()
        from dino_mm.engine.runner_utils import finish_distributed
        finish_distributed(cfg.get('launcher'))
    finally:
        if locked:
            from dino_mm.engine.workdir_lock import unlock_work_dir
            unlock_work_dir(cfg.work_dir)


def lock_work_dir_or_exit(cfg) -> bool:
    """Global rank 0 locks ``cfg.work_dir``; exit 2 naming the holder if another run has it.

    All ranks of a distributed run share the work dir, so only rank 0 locks it (see
    dino_mm/engine/workdir_lock.py); the launcher stops the other ranks when it exits.
    """
    from dino_mm.engine.workdir_lock import (WorkDirLockedError, global_rank_from_env,
                                             lock_work_dir)
    if global_rank_from_env(cfg.launcher) != 0:
        return False
    try:
        return lock_work_dir(cfg.work_dir) is not None
    except WorkDirLockedError as err:
        print(f'error: {err}', file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == '__main__':
    main()
