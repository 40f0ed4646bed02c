"""Evaluate a dino_mm model (kNN / linear / logistic regression, segmentation, depth,
detection) with an MMEngine test loop.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR]
                         [--tta] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

CHECKPOINT is a model checkpoint written by tools/train.py, or ``none`` for configs
whose backbone weights come from ``init_cfg`` (e.g. official backbone files).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402


# --out FILE: predictions for a pickle file (as mmdet's --out), metrics for json / yaml.
PREDICTION_EXTS = ('.pkl', '.pickle')
METRIC_EXTS = ('.json', '.yaml', '.yml')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a dino_mm model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help="checkpoint file, or 'none'")
    parser.add_argument('--work-dir', help='directory for logs and metrics')
    parser.add_argument(
        '--out', metavar='FILE',
        help='FILE.pkl / .pickle: pickle the predictions, one entry per test sample (read '
        'with mmengine.load; ground truth left out); FILE.json / .yaml: write the metrics. '
        'The metrics are always logged in the work dir.')
    parser.add_argument(
        '--random-init', action='store_true',
        help='with CHECKPOINT none and a config that names no weights: evaluate the '
        "model's random initialisation on purpose (otherwise an error)")
    parser.add_argument('--show', action='store_true', help='show results in a window')
    parser.add_argument('--show-dir', help='write visualised predictions to this folder')
    parser.add_argument('--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument(
        '--tta', action='store_true',
        help="test-time augmentation with the config's tta_model / tta_pipeline: "
        'segmentation multi-scale + flip, depth and detection image + horizontal flip')
    parser.add_argument(
        '--amp', action='store_true',
        help='mixed-precision test loop (test_cfg.fp16): bf16 autocast on CPU, fp16 on '
        "GPUs; frozen-feature models get the same model.precision")
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
    if args.out is not None and not args.out.endswith(PREDICTION_EXTS + METRIC_EXTS):
        parser.error(f'--out {args.out}: use a .pkl / .pickle file for the predictions or '
                     'a .json / .yaml file for the metrics')
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


def add_prediction_dump(cfg, out_file):
    """Append a metric that pickles the per-sample predictions to ``out_file``.

    As mmdet's ``tools/test.py --out``: detection configs (mmdet scope) get mmdet's
    ``DumpDetResults``, the others ``dino_mm.DumpPredictions`` (MMEngine's ``DumpResults``
    without ground truth and dense class scores). The config's metrics still run and are
    logged; a dict evaluator becomes a list, a list gets one more entry.
    """
    import copy
    evaluator = cfg.get('test_evaluator')
    if not evaluator:
        raise RuntimeError(f'--out {out_file}: the config has no test_evaluator to add the '
                           'prediction dump to; define test_evaluator in the config.')
    dump_type = ('mmdet.DumpDetResults' if cfg.get('default_scope') == 'mmdet'
                 else 'dino_mm.DumpPredictions')
    dump = dict(type=dump_type, out_file_path=osp.abspath(out_file))
    evaluator = copy.deepcopy(evaluator)  # test_evaluator is often val_evaluator itself
    if isinstance(evaluator, dict) and 'metrics' in evaluator:  # an Evaluator config
        metrics = evaluator['metrics']
        metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        evaluator['metrics'] = metrics + [dump]
    elif isinstance(evaluator, dict):
        evaluator = [evaluator, dump]
    else:
        evaluator = list(evaluator) + [dump]
    cfg.test_evaluator = evaluator
    return cfg


#: Model config keys that name weights the model loads itself.
MODEL_LEVEL_CHECKPOINTS = ('LinearProbeGrid', 'DINOTxt')
WEIGHT_KEYS = ('backbone_checkpoint', 'teacher_ckpt', 'gram_ckpt', 'pretrained')


def pretrained_references(node, path='model'):
    """Every weight file the model config asks for (``init_cfg`` Pretrained, ...)."""
    refs = []
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            refs.append(f"{path}: {node['checkpoint']}")
        for key, value in node.items():
            if key in WEIGHT_KEYS and isinstance(value, str) and value:
                refs.append(f'{path}.{key}: {value}')
            else:
                refs += pretrained_references(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            refs += pretrained_references(value, f'{path}[{i}]')
    return refs


def init_weights_or_exit(runner, cfg, args) -> None:
    """CHECKPOINT ``none``: load the weights the config names (``init_cfg``), or refuse.

    ``Runner.test`` never calls ``init_weights``, so without this a segmentation, depth or
    detection leaf would be evaluated with a random backbone although its ``init_cfg``
    names the official file (and mmdet parts would keep uninitialised values). A config
    that names no weights at all is refused unless ``--random-init`` asks for that model.
    """
    refs = pretrained_references(cfg.model)
    if not refs and not args.random_init:
        print(f'error: {args.config}: CHECKPOINT is "none" and the model config names no '
              'weights (no init_cfg=dict(type="Pretrained", ...), no backbone_checkpoint), '
              'so this would evaluate random weights. Pass a checkpoint file, set the '
              "backbone's init_cfg / model.backbone_checkpoint, or add --random-init to "
              'evaluate the random initialisation on purpose.', file=sys.stderr)
        raise SystemExit(2)
    from mmengine.logging import print_log
    print_log('CHECKPOINT none: initialising the model from its config ('
              + ('; '.join(refs) if refs else 'random init, --random-init') + ')',
              logger='current')
    runner._init_model_weights()  # init_cfg Pretrained files are read (and checked) here


def main(argv=None):
    args = parse_args(argv)
    from dino_mm.engine.runner_utils import (apply_common_args,
                                             setup_cpu_distributed)
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    cfg = Config.fromfile(args.config)
    apply_common_args(cfg, args.config, args.work_dir, args.launcher)
    if args.amp:
        from dino_mm.engine.config_checks import ConfigError
        from dino_mm.engine.runner_utils import apply_test_amp
        try:
            apply_test_amp(cfg)
        except ConfigError as err:
            print(f'error: {args.config}: {err}', file=sys.stderr)
            raise SystemExit(2) from None
    if args.cfg_options is not None:
        from dino_mm.engine.config_checks import ConfigError, validate_cfg_options
        try:
            cfg.merge_from_dict(validate_cfg_options(cfg, args.cfg_options))
        except ConfigError as err:
            print(f'error: {args.config}: {err}', file=sys.stderr)
            raise SystemExit(2) from None
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    # Models with a frozen backbone *and* trained parts take CHECKPOINT as a model-level file
    # (load_from): the linear probe grid and dino.txt (heads + text tower).
    frozen_eval = ('backbone_checkpoint' in cfg.model
                   and not str(cfg.model.get('type', '')).endswith(MODEL_LEVEL_CHECKPOINTS))
    if checkpoint is not None:
        from dino_mm.engine.checkpoint import check_checkpoint_file
        if frozen_eval:
            # a backbone file: an official name is looked up like the hub does, and a HF
            # transformers model folder (config.json + weights) is accepted as it is
            from dino_mm.models.backbones.utils import resolve_backbone_file
            checkpoint = resolve_backbone_file(checkpoint, 'tools/test.py CHECKPOINT')
            if not osp.isfile(osp.join(checkpoint, 'config.json')):
                checkpoint = check_checkpoint_file(checkpoint)
        else:
            checkpoint = check_checkpoint_file(checkpoint)  # missing, a directory, empty
    if checkpoint is not None and frozen_eval:
        # Frozen-feature evaluations (kNN, logistic regression) take an official-layout
        # backbone file, loaded strictly by the model (Runner.test never calls
        # init_weights, and load_from expects model-level keys). A linear probe's
        # checkpoint (from tools/train.py) holds the trained classifiers, a dino.txt one the
        # heads and the text tower: load_from.
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
    if args.out and args.out.endswith(PREDICTION_EXTS):
        add_prediction_dump(cfg, args.out)
    from dino_mm.utils.scope import add_prefix_scopes
    add_prefix_scopes(cfg)  # 'mmseg.X' is built in the mmseg scope, etc.
    setup_cpu_distributed(cfg)
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    if checkpoint is None and cfg.get('load_from', None) is None:
        init_weights_or_exit(runner, cfg, args)
    metrics = runner.test()
    if args.out and args.out.endswith(METRIC_EXTS) and runner.rank == 0:
        import mmengine
        mmengine.dump({k: (float(v) if hasattr(v, '__float__') else v)
                       for k, v in (metrics or {}).items()}, args.out)
    from dino_mm.engine.runner_utils import finish_distributed
    finish_distributed(cfg.get('launcher'))
    return metrics


if __name__ == '__main__':
    main()
