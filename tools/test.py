"""Evaluate a dino_mm model (kNN / linear / logistic regression, segmentation, depth,
detection) with an MMEngine test loop.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

CHECKPOINT is a model checkpoint written by tools/train.py, or ``none`` for configs
whose backbone weights come from ``init_cfg`` (e.g. official backbone files).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a dino_mm model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help="checkpoint file, or 'none'")
    parser.add_argument('--work-dir', help='directory for logs and metrics')
    parser.add_argument('--out', help='dump the metrics (json/pkl/yaml) to this file')
    parser.add_argument('--show', action='store_true', help='show results in a window')
    parser.add_argument('--show-dir', help='write visualised predictions to this folder')
    parser.add_argument('--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument('--tta', action='store_true', help='use test-time augmentation')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. test_dataloader.batch_size=4. Keys are checked '
        'first: a top-level key the config lacks, or an argument the class of a typed entry '
        '(hook, model part, metric) does not take, is an error. Prefix a key with "+" to add '
        'a new entry on purpose (+my_key=1).')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    """Turn on the task's visualisation hook for --show / --show-dir.

    mmseg-style hooks save through the visualizer's ``save_dir``; mmdet-style hooks take
    ``test_out_dir``. Both are handled so seg, depth and detection configs work alike.
    """
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise RuntimeError(
            f'--show / --show-dir need a `default_hooks.visualization` entry, which '
            f'{args.config} does not define. Add the task visualisation hook to the config.')
    hook = hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        hook_type = str(hook.get('type', ''))
        if 'Det' in hook_type:
            hook['test_out_dir'] = osp.abspath(args.show_dir)
        else:
            cfg.visualizer['save_dir'] = osp.abspath(args.show_dir)
            if 'show_dir' in hook or 'Depth' in hook_type:
                hook['show_dir'] = osp.abspath(args.show_dir)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from dino_mm.engine.runner_utils import (apply_common_args,
                                             setup_cpu_distributed)
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    cfg = Config.fromfile(args.config)
    apply_common_args(cfg, args.config, args.work_dir, args.launcher)
    if args.cfg_options is not None:
        from dino_mm.engine.config_checks import ConfigError, validate_cfg_options
        try:
            cfg.merge_from_dict(validate_cfg_options(cfg, args.cfg_options))
        except ConfigError as err:
            print(f'error: {args.config}: {err}', file=sys.stderr)
            raise SystemExit(2) from None
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    if checkpoint is not None:
        from dino_mm.engine.checkpoint import check_checkpoint_file
        checkpoint = check_checkpoint_file(checkpoint)  # missing, a directory, empty
    if (checkpoint is not None and 'backbone_checkpoint' in cfg.model
            and not str(cfg.model.get('type', '')).endswith('LinearProbeGrid')):
        # Frozen-feature evaluations (kNN, logistic regression) take an official-layout
        # backbone file, loaded strictly by the model (Runner.test never calls
        # init_weights, and load_from expects model-level keys). A linear probe's
        # checkpoint (from tools/train.py) holds the trained classifiers: load_from.
        cfg.model.backbone_checkpoint = checkpoint
        checkpoint = None
    cfg.load_from = checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise RuntimeError(f'--tta needs `tta_model` and `tta_pipeline` in {args.config}')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    from dino_mm.utils.scope import add_prefix_scopes
    add_prefix_scopes(cfg)  # 'mmseg.X' is built in the mmseg scope, etc.
    setup_cpu_distributed(cfg)
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    metrics = runner.test()
    if args.out and runner.rank == 0:
        import mmengine
        mmengine.dump({k: (float(v) if hasattr(v, '__float__') else v)
                       for k, v in (metrics or {}).items()}, args.out)
    return metrics


if __name__ == '__main__':
    main()
