"""Linear probe end to end through ``tools/train.py`` and ``tools/test.py``.

The official-style leaf config of configs/eval/linear is used as a user would on a
small machine: the digits dataset in the ImageNet layout, a tiny backbone file passed
as ``model.backbone_checkpoint`` and small pipelines, all through ``--cfg-options``.
"""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = 'configs/eval/linear/dinov2-vits14_linear-grid_8xb128-12.5k_in1k.py'


def _run(cmd):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_linear_probe_train_and_test_through_tools(tmp_path):
    sys.path.insert(0, os.path.join(REPO, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset

    from dino_mm.datasets import dump_imagenet_extra
    root = str(tmp_path / 'digits')
    make_digits_dataset(root, size=28, val_fraction=0.2)
    dump_imagenet_extra(root, os.path.join(root, 'extra'), splits=('TRAIN', 'VAL'))
    from .conftest import tiny_vit
    backbone = tiny_vit()
    backbone_ckpt = tmp_path / 'backbone.pth'
    torch.save(backbone.state_dict(), backbone_ckpt)

    model_opts = [f'model.backbone.{k}={v}' for k, v in dict(
        depth=backbone.n_blocks, embed_dim=backbone.embed_dim,
        num_heads=backbone.blocks[0].attn.num_heads, img_size=28).items()]
    model_opts += ['model.num_classes=10', 'model.batch_size_per_gpu=32',
                   'model.learning_rates=[0.01,0.1]']
    loader = ['batch_size=32', 'num_workers=0', 'persistent_workers=False']
    eval_opts = [f'{name}.{o}' for name in ('val_dataloader', 'test_dataloader')
                 for o in loader + [f'dataset.data_root={root}',
                                    'dataset.pipeline.1.scale=28',
                                    'dataset.pipeline.2.crop_size=28']]
    train_opts = [f'train_dataloader.{o}' for o in loader + [
        f'dataset.data_root={root}', 'dataset.pipeline.1.scale=28']]

    work_dir = tmp_path / 'work'
    _run(['tools/train.py', CONFIG, '--work-dir', str(work_dir), '--cfg-options',
          f'model.backbone_checkpoint={backbone_ckpt}', *model_opts, *train_opts,
          *eval_opts, 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
          'param_scheduler.0.T_max=2', 'param_scheduler.0.end=2',
          'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'])
    ckpt = work_dir / 'iter_2.pth'
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    clf_keys = [k for k in state if k.startswith('classifiers.')]
    assert len(clf_keys) == 2 * 2 * 2 * 2  # (lr x blocks x avgpool) x (weight, bias)
    # The frozen backbone in the checkpoint is the one given as backbone_checkpoint.
    torch.testing.assert_close(state['backbone.cls_token'], backbone.cls_token)

    out = tmp_path / 'metrics.json'
    _run(['tools/test.py', CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test'),
          '--out', str(out), '--cfg-options', *model_opts, *eval_opts])
    metrics = json.load(open(out))
    assert 'linear/top1' in metrics, metrics  # the best classifier's top-1
    assert 0.0 <= metrics['linear/top1'] <= 100.0
    per_clf = [v for k, v in metrics.items() if k.endswith('_top1') and k != 'linear/top1']
    assert len(per_clf) == 8
    assert metrics['linear/top1'] == max(per_clf)
    # tools/test.py evaluates the trained classifiers of the checkpoint: same numbers as
    # the validation at the end of training (same val images and transform).
    scalars = glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))
    assert len(scalars) == 1, scalars
    val = [json.loads(line) for line in open(scalars[0])]
    val = [r for r in val if 'linear/top1' in r][-1]
    for key, value in metrics.items():
        if key.endswith('_top1') or key == 'linear/top5':
            assert value == pytest.approx(val[key], abs=1e-4), key
