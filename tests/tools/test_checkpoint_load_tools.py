"""tools/test.py refuses a checkpoint of another model instead of evaluating random weights.

Before: a pretraining checkpoint given to a classification config loaded 0 keys, MMEngine
printed a warning, and the run reported chance accuracy with exit code 0.
"""
import json
import os.path as osp
import subprocess
import sys

import torch

from dino_mm.engine.checkpoint import atomic_torch_save, safe_torch_load

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'demo', 'vit-tiny_cls_digits.py')
PY = sys.executable


def _opts(digits_root):
    return ['--cfg-options', f'data_root={digits_root}',
            f'train_dataloader.dataset.data_root={digits_root}',
            f'val_dataloader.dataset.data_root={digits_root}',
            f'test_dataloader.dataset.data_root={digits_root}',
            'model.backbone.img_size=16', 'train_dataloader.batch_size=16',
            'train_cfg.max_iters=2', 'train_cfg.val_interval=1000',
            'default_hooks.checkpoint.interval=2']


def _run(args, env):
    return subprocess.run([PY, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_test_tool_refuses_a_checkpoint_that_does_not_fit(tmp_path, digits_root, tool_env):
    wd = str(tmp_path / 'wd')
    p = _run(['tools/train.py', CONFIG, '--work-dir', wd, *_opts(digits_root)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    good = osp.join(wd, 'iter_2.pth')
    state = safe_torch_load(good)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    assert backbone and any(k.startswith('head.') for k in state)

    # A pretraining checkpoint: student / teacher networks with DINO heads.
    pretrain = {}
    for net in ('student', 'teacher'):
        pretrain.update({f'{net}.backbone.{k}': v for k, v in backbone.items()})
        pretrain[f'{net}.dino_head.mlp.0.weight'] = torch.zeros(32, 64)
        pretrain[f'{net}.dino_head.last_layer.weight'] = torch.zeros(128, 32)
    bad = str(tmp_path / 'dinov2_pretrain_iter_10.pth')
    atomic_torch_save({'state_dict': pretrain, 'meta': {'iter': 10}}, bad)
    out = str(tmp_path / 'bad_metrics.json')
    p = _run(['tools/test.py', CONFIG, bad, '--work-dir', wd, '--out', out,
              *_opts(digits_root)], tool_env)
    assert p.returncode != 0, p.stdout[-2000:]
    err = p.stderr
    assert 'CheckpointError' in err and f'"{bad}"' in err, err[-3000:]
    assert "'teacher.backbone.'" in err and "'student.backbone.'" in err, err[-3000:]
    assert "'student.dino_head.'" in err and "'head.fc.'" in err, err[-3000:]
    assert f'tools/convert/pretrain_to_backbone.py {bad}' in err, err[-3000:]
    assert not osp.exists(out)  # no metrics for an evaluation of random weights

    # Too few: the backbone alone (under backbone.), so the classifier would be random.
    no_head = str(tmp_path / 'backbone_only.pth')
    atomic_torch_save({'state_dict': {f'backbone.{k}': v for k, v in backbone.items()}},
                      no_head)
    p = _run(['tools/test.py', CONFIG, no_head, '--work-dir', wd, *_opts(digits_root)],
             tool_env)
    assert p.returncode != 0, p.stdout[-2000:]
    assert 'backbone_only.pth' in p.stderr and \
        "missing parameters, by prefix: 'head.fc.'" in p.stderr, p.stderr[-3000:]

    # The checkpoint this config wrote still evaluates.
    out = str(tmp_path / 'metrics.json')
    p = _run(['tools/test.py', CONFIG, good, '--work-dir', wd, '--out', out,
              *_opts(digits_root)], tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 0.0 <= json.load(open(out))['accuracy/top1'] <= 100.0
