"""MMEngine integration: FeatureEvalTestLoop + metrics through Runner, and the configs."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from dino_mm.evaluation.knn import knn_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _runner(tmp_path, evaluator, ds_train, ds_val):
    from .conftest import tiny_vit
    loader = dict(batch_size=32, num_workers=0, sampler=dict(type='DefaultSampler',
                                                             shuffle=False),
                  collate_fn=dict(type='pseudo_collate'))
    from mmengine.model import ImgDataPreprocessor

    from dino_mm.evaluation.loops import FrozenFeatureModel

    # Instances, not configs: a MODELS lookup in scope dino_mm imports the registry
    # locations, including the mmseg glue, which needs mmcv. fp32: the metrics are
    # compared with an fp32 reference to 1e-4 (bf16 is checked in test_precision.py).
    model = FrozenFeatureModel(tiny_vit(), precision='fp32',
                               data_preprocessor=ImgDataPreprocessor(mean=[127.5] * 3,
                                                                     std=[127.5] * 3))
    return Runner(
        model=model,
        work_dir=str(tmp_path),
        test_dataloader=dict(dataset=ds_val, **loader),
        test_cfg=dict(type='dino_mm.FeatureEvalTestLoop',
                      train_dataloader=dict(dataset=ds_train, **loader),
                      cache_dir='features'),
        test_evaluator=evaluator,
        default_scope='dino_mm')


def test_runner_knn_and_logreg(tmp_path, digits):
    from .conftest import DigitsDataset, tiny_vit
    images, labels = digits
    ds_train = DigitsDataset(images[:400], labels[:400])
    ds_val = DigitsDataset(images[400:600], labels[400:600])
    runner = _runner(tmp_path, [dict(type='dino_mm.KNNMetric', ks=(10, 20)),
                                dict(type='dino_mm.LogisticRegressionMetric', Cs=[0.1, 10.0],
                                     max_iter=50, backend='sklearn')], ds_train, ds_val)
    metrics = runner.test()
    with torch.no_grad():
        m = tiny_vit()
        ftr = m(ds_train.images.float() / 127.5 - 1)
        fva = m(ds_val.images.float() / 127.5 - 1)
    ref = knn_evaluate(ftr, labels[:400], fva, labels[400:600], ks=(10, 20))
    for key in ('10nn_top1', '20nn_top1', '20nn_top5'):
        assert metrics[f'knn/{key}'] == pytest.approx(ref[key], abs=1e-4)
    assert metrics['logreg/top1'] > 30 and metrics['logreg/best_C'] in (0.1, 10.0)
    assert os.path.isfile(tmp_path / 'features' / 'train_features' / 'meta.json')


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs/eval/*/*.py'))))
def test_configs_parse(path):
    cfg = Config.fromfile(path)
    assert cfg.model.backbone.arch in os.path.basename(path).replace('-', '_').replace(
        '_reg_', '_reg_') or cfg.model.backbone.arch.replace('_', '-') in path
    if '/linear/' in path:
        assert cfg.optim_wrapper.constructor == 'dino_mm.LinearProbeOptimWrapperConstructor'
        assert cfg.train_cfg.max_iters == 12500
    else:
        assert cfg.test_cfg.type == 'dino_mm.FeatureEvalTestLoop'


@pytest.mark.parametrize('form', ['file', 'official-name', 'hf-folder'])
def test_tools_test_py_end_to_end(tmp_path, form):
    """``tools/test.py CONFIG BACKBONE`` on digits in the official ImageNet layout.

    The whole path runs (config, backbone file loaded strictly, training-feature
    extraction, k-NN metric, ``--out``), and the accuracies are far above chance. The
    backbone is given as a file path, as an official file name found in
    ``$DINO_MM_WEIGHTS`` (as the hub finds it), and as a HF transformers model folder
    written by ``tools/convert/convert_checkpoint.py --to hf``.
    """
    import json
    import subprocess
    sys.path.insert(0, os.path.join(REPO, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset

    from dino_mm.datasets import dump_imagenet_extra
    root = str(tmp_path / 'digits')
    make_digits_dataset(root, size=28, val_fraction=0.2)
    dump_imagenet_extra(root, os.path.join(root, 'extra'), splits=('TRAIN', 'VAL'))
    from .conftest import tiny_vit
    backbone = tiny_vit()
    ckpt = tmp_path / 'backbone.pth'
    torch.save(backbone.state_dict(), ckpt)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    given = str(ckpt)
    if form == 'official-name':
        weights = tmp_path / 'weights'
        weights.mkdir()
        os.replace(ckpt, weights / 'dinov2_vits14_pretrain.pth')
        env['DINO_MM_WEIGHTS'] = str(weights)
        given = 'dinov2_vits14_pretrain.pth'
    elif form == 'hf-folder':
        given = str(tmp_path / 'hf')
        conv = subprocess.run([sys.executable, 'tools/convert/convert_checkpoint.py',
                               str(ckpt), given, '--to', 'hf', '--head-dim', '16'],
                              cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert conv.returncode == 0, conv.stderr[-3000:]
        assert os.path.isfile(os.path.join(given, 'config.json'))
        os.remove(ckpt)
    out = tmp_path / 'metrics.json'
    small = ['dataset.pipeline.1.scale=28', 'dataset.pipeline.2.crop_size=28',
             'batch_size=128', 'num_workers=0', 'persistent_workers=False']
    opts = [f'{loader}.{o}' for loader in ('test_dataloader', 'test_cfg.train_dataloader')
            for o in small]
    opts += [f'{loader}.dataset.data_root={root}'
             for loader in ('test_dataloader', 'test_cfg.train_dataloader')]
    cfg_opts = [f'model.backbone.{k}={v}' for k, v in dict(
        depth=backbone.n_blocks, embed_dim=backbone.embed_dim,
        num_heads=backbone.blocks[0].attn.num_heads, img_size=28).items()]
    cmd = [sys.executable, 'tools/test.py',
           'configs/eval/knn/dinov2-vits14_knn_8xb256_in1k.py', given,
           '--work-dir', str(tmp_path / 'work'), '--out', str(out), '--cfg-options',
           'test_evaluator.ks=[10,20]', *cfg_opts, *opts]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.load(open(out))
    knn_keys = [k for k in metrics if 'nn_top1' in k]
    assert knn_keys, metrics
    for k in knn_keys:
        assert 10.0 <= metrics[k] <= 100.0  # far above chance (10 %) on digits
