"""End to end on tiny on-disk ADE20K / VOC2012: train with the runner, test, visualise.

The leaf configs of configs/segmentation are used as they are, with a tiny ViT and
tiny images swapped in through cfg-options, as a user would on a small machine.
"""
import glob
import importlib.util
import os
import os.path as osp

import numpy as np
import pytest
import torch

from tests.oracles import require

require('mmseg.models')
require('mmdet.models')

import dino_mm.datasets.segmentation  # noqa: E402,F401  (registers CheckSegAnnotation)
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIM = 32
LINEAR_ADE = 'configs/segmentation/dinov2/dinov2-vits14_linear_8xb2-40k_ade20k-512x512.py'
MS_VOC = 'configs/segmentation/dinov2/dinov2-vits14_ms_8xb2-40k_voc12-640x640.py'
M2F_ADE = 'configs/segmentation/dinov2/dinov2-vitg14_vit-adapter-m2f_8xb2-80k_ade20k-512x512.py'
M2F_ADE_V3 = (
    'configs/segmentation/dinov3/dinov3-vit7b16_vit-adapter-m2f_8xb2-80k_ade20k-512x512.py')


def _tiny_options(data_root, work_dir, n_layers, reduce_zero_label, num_classes):
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=reduce_zero_label),
        dict(type='dino_mm.CheckSegAnnotation', num_classes=num_classes),
        dict(type='RandomResize', scale=(70, 56), ratio_range=(0.8, 1.2), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(42, 42)),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(70, 56), keep_ratio=True),
        dict(type='LoadAnnotations', reduce_zero_label=reduce_zero_label),
        dict(type='dino_mm.CheckSegAnnotation', num_classes=num_classes),
        dict(type='PackSegInputs'),
    ]
    return {
        'work_dir': work_dir,
        'model.backbone.depth': 4, 'model.backbone.embed_dim': DIM,
        'model.backbone.num_heads': 2, 'model.backbone.img_size': 56,
        'model.backbone.out_indices': list(range(4 - n_layers, 4)),
        'model.backbone.init_cfg': None,
        'model.decode_head.in_channels': [DIM] * n_layers,
        'model.decode_head.channels': DIM * n_layers,
        'model.data_preprocessor.size': (42, 42),
        'model.test_cfg.crop_size': (42, 42), 'model.test_cfg.stride': (28, 28),
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_root,
        'train_dataloader.dataset.pipeline': train_pipeline,
        'val_dataloader.num_workers': 0, 'val_dataloader.persistent_workers': False,
        'val_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.pipeline': test_pipeline,
        'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False,
        'test_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.pipeline': test_pipeline,
        'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
        'default_hooks.checkpoint.interval': 2, 'default_hooks.logger.interval': 1,
        'default_hooks.visualization.interval': 1,
        'env_cfg.cudnn_benchmark': False,
        'randomness': dict(seed=0),
    }


def _train(config, options):
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.merge_from_dict(options)
    runner = Runner.from_cfg(cfg)
    runner.train()
    ckpt = osp.join(cfg.work_dir, 'iter_2.pth')
    assert osp.isfile(ckpt)
    return runner, ckpt


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'dino_mm_tool_{name}',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _derived_config(tmp_path, leaf, options):
    """A user-style config: the leaf as `_base_` plus the tiny overrides."""
    nested = {}
    for key, value in options.items():
        node = nested
        *parents, last = key.split('.')
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    lines = [f'_base_ = [{osp.join(ROOT, leaf)!r}]']
    lines += [f'{k} = {v!r}' for k, v in nested.items()]
    path = tmp_path / 'tiny_config.py'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def test_linear_ade20k_train_test_and_show_through_tools(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    options = _tiny_options(ade_root, work_dir, 1, True, 150)
    config = _derived_config(tmp_path, LINEAR_ADE, options)
    _load_tool('train').main([config, '--work-dir', work_dir])
    ckpt = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(ckpt)
    state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    assert 'decode_head.conv_seg.weight' in state and 'decode_head.bn.running_mean' in state

    show_dir = str(tmp_path / 'show')
    metrics = _load_tool('test').main([
        config, ckpt, '--work-dir', str(tmp_path / 'test'), '--show-dir', show_dir,
        # A new visualizer name: mmengine reuses a same-named visualizer (and its
        # save_dir) from the training run that happened in this process.
        '--cfg-options', 'default_hooks.visualization.interval=1',
        'visualizer.name=seg_test_visualizer', 'test_dataloader.batch_size=1'])
    assert 0.0 <= metrics['mIoU'] <= 100.0
    pngs = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(pngs) == 2, pngs  # one colour-coded overlay per validation image
    from PIL import Image
    assert Image.open(pngs[0]).mode == 'RGB'


# Short schedule, given to tools/train.py through --cfg-options.
SCHEDULE = ('train_cfg.max_iters', 'train_cfg.val_interval', 'default_hooks.checkpoint.interval')


def _train_and_test_through_tools(tmp_path, leaf, options, show=False):
    """``tools/train.py`` (2 iterations) then ``tools/test.py --out`` on iter_2.pth.

    Like the linear case: a user-style config (the leaf plus the tiny model and data),
    with the schedule passed as --cfg-options. Returns the dumped test metrics. With
    ``show``, ``--show-dir`` must write one RGB overlay per validation image.
    """
    import json
    work_dir = options['work_dir']
    schedule = [f'{k}={options[k]}' for k in SCHEDULE]
    config = _derived_config(tmp_path, leaf,
                             {k: v for k, v in options.items() if k not in SCHEDULE})
    _load_tool('train').main([config, '--work-dir', work_dir, '--cfg-options', *schedule])
    ckpt = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(ckpt)
    out = str(tmp_path / 'metrics.json')
    show_dir = str(tmp_path / 'show')
    extra = (['--show-dir', show_dir] if show else [])
    options_show = (['default_hooks.visualization.interval=1',
                     # one name per test: mmengine hands back a same-named visualizer
                     # (and its save_dir) made earlier in this process
                     f'visualizer.name=seg_show_{tmp_path.name}'] if show else [])
    metrics = _load_tool('test').main([
        config, ckpt, '--work-dir', str(tmp_path / 'test'), '--out', out, *extra,
        '--cfg-options', 'test_dataloader.batch_size=1', *options_show])
    with open(out) as f:
        dumped = json.load(f)
    assert dumped['mIoU'] == pytest.approx(metrics['mIoU'])
    if show:
        from PIL import Image
        pngs = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
        assert len(pngs) == 2, pngs
        assert Image.open(pngs[0]).mode == 'RGB'
    return dumped


def test_ms_voc_train_and_evaluate(voc_root, tmp_path):
    options = _tiny_options(voc_root, str(tmp_path / 'work'), 4, False, 21)
    # Multi-scale + flip TTA (4 views) on whole images; slide + TTA is unit-tested.
    options['model.test_cfg'] = dict(mode='whole', img_ratios=[1.0, 1.5], flip=True)
    metrics = _train_and_test_through_tools(tmp_path, MS_VOC, options)
    assert 0.0 <= metrics['mIoU'] <= 100.0


def test_mask2former_ade20k_train_and_evaluate(ade_root, tmp_path):
    options = _tiny_options(ade_root, str(tmp_path / 'work'), 1, True, 150)
    options = {k: v for k, v in options.items()
               if not k.startswith(('model.backbone.', 'model.decode_head.'))}
    options['model.test_cfg'] = dict(mode='slide', crop_size=(42, 42), stride=(28, 28))
    # A tiny ViT in place of the leaf's ViT-g (and its pretrained init_cfg).
    options['model.backbone.backbone'] = dict(
        _delete_=True, type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14',
        depth=4, embed_dim=DIM, num_heads=2, img_size=56)
    # The leaf's original ViT-Adapter (injectors) over two block ranges of the tiny ViT.
    options.update({'model.backbone.interaction_indexes': [[0, 1], [2, 3]],
                    'model.backbone.conv_inplane': 8, 'model.backbone.deform_num_heads': 4})
    options['model.decode_head'] = _tiny_m2f_head()
    metrics = _train_and_test_through_tools(tmp_path, M2F_ADE, options, show=True)
    assert 0.0 <= metrics['mIoU'] <= 100.0
    state = torch.load(osp.join(options['work_dir'], 'iter_2.pth'), map_location='cpu',
                       weights_only=False)['state_dict']
    assert 'backbone.interactions.1.injector.gamma' in state  # the leaf's ViT-Adapter


def _tiny_m2f_head():
    attn = dict(embed_dims=DIM, num_heads=4)
    ffn = dict(embed_dims=DIM, feedforward_channels=64)
    return dict(
        in_channels=[DIM] * 4, feat_channels=DIM, out_channels=DIM, num_queries=8,
        pixel_decoder=dict(
            norm_cfg=dict(type='GN', num_groups=4),
            encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=attn, ffn_cfg=ffn)),
            positional_encoding=dict(num_feats=DIM // 2)),
        positional_encoding=dict(num_feats=DIM // 2),
        transformer_decoder=dict(num_layers=2, layer_cfg=dict(
            self_attn_cfg=attn, cross_attn_cfg=attn, ffn_cfg=ffn)),
        train_cfg=dict(num_points=256))


def test_dinov3_mask2former_ade20k_train_test_and_show(ade_root, tmp_path):
    """The DINOv3 ViT-7B segmentor leaf (``dinov3_vit7b16_ms``: the DINOv3 adapter over the
    frozen ViT + Mask2Former) trains 2 iterations through ``tools/train.py`` with a tiny
    ViT of the 7B's architecture, then ``tools/test.py --show-dir`` evaluates and draws."""
    options = _tiny_options(ade_root, str(tmp_path / 'work'), 1, True, 150)
    options = {k: v for k, v in options.items()
               if not k.startswith(('model.backbone.', 'model.decode_head.'))}
    # patch 16: crops and slide windows of 48 px
    options['model.data_preprocessor.size'] = (48, 48)
    options['model.test_cfg'] = dict(mode='slide', crop_size=(48, 48), stride=(32, 32))
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        pipe = options[f'{split}.dataset.pipeline']
        for t in pipe:
            if t['type'] == 'RandomCrop':
                t['crop_size'] = (48, 48)
    # The leaf's 7B architecture (SwiGLU, 4 storage tokens, RoPE, layer scale) at 4 blocks
    # of width 32, without its pretrained init_cfg.
    options['model.backbone.backbone'] = dict(
        _delete_=True, type='dino_mm.DinoVisionTransformer', arch='dinov3_vit7b16',
        depth=4, embed_dim=DIM, num_heads=2)
    options.update({'model.backbone.interaction_indexes': [0, 1, 2, 3],
                    'model.backbone.conv_inplane': 8, 'model.backbone.deform_num_heads': 4})
    options['model.decode_head'] = _tiny_m2f_head()
    metrics = _train_and_test_through_tools(tmp_path, M2F_ADE_V3, options, show=True)
    assert 0.0 <= metrics['mIoU'] <= 100.0
    state = torch.load(osp.join(options['work_dir'], 'iter_2.pth'), map_location='cpu',
                       weights_only=True)['state_dict']
    assert any(k.startswith('backbone.backbone.blocks.3.') for k in state)
    assert any(k.startswith('decode_head.transformer_decoder.') for k in state)


def _iou_metric(samples, num_classes):
    from mmseg.evaluation import IoUMetric
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=[str(i) for i in range(num_classes)])
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_miou_hand_checked_on_loaded_annotations(ade_root):
    """GT as prediction gives 100; a known confusion gives the hand-computed value."""
    from mmseg.datasets import ADE20KDataset
    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = ADE20KDataset(
            data_root=ade_root,
            data_prefix=dict(img_path='images/validation',
                             seg_map_path='annotations/validation'),
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', reduce_zero_label=True),
                      dict(type='dino_mm.CheckSegAnnotation', num_classes=150),
                      dict(type='PackSegInputs')])
        gts = [ds[i]['data_samples'].gt_sem_seg.data for i in range(len(ds))]
    assert all(int((g == 255).sum()) == 64 for g in gts)  # the 8x8 ignored corner

    perfect = [dict(pred_sem_seg=dict(data=g), gt_sem_seg=dict(data=g)) for g in gts]
    assert _iou_metric(perfect, 150)['mIoU'] == 100.0

    # Predict class 0 wherever the truth is class 1 (ignored pixels excluded).
    wrong = []
    for g in gts:
        p = g.clone()
        p[g == 1] = 0
        wrong.append(dict(pred_sem_seg=dict(data=p), gt_sem_seg=dict(data=g)))
    n0 = sum(int((g == 0).sum()) for g in gts)
    n1 = sum(int((g == 1).sum()) for g in gts)
    expected = np.round(np.mean([n0 / (n0 + n1), 0.0, 1.0]) * 100, 2)
    assert _iou_metric(wrong, 150)['mIoU'] == pytest.approx(expected, abs=0.01)


def _ade_pipeline_dataset(root):
    with DefaultScope.overwrite_default_scope('mmseg'):
        return _ade_dataset(root)


def _ade_dataset(root):
    from mmseg.datasets import ADE20KDataset
    return ADE20KDataset(
        data_root=root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='Resize', scale=(70, 56), keep_ratio=True),
                  dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='dino_mm.CheckSegAnnotation', num_classes=150),
                  dict(type='PackSegInputs')])


def test_bad_annotations_give_errors_naming_the_file(ade_root, tmp_path):
    import shutil
    from PIL import Image
    root = str(tmp_path / 'ADEChallengeData2016')
    shutil.copytree(ade_root, root)
    ann_dir = osp.join(root, 'annotations', 'validation')
    name = sorted(os.listdir(ann_dir))[0]
    path = osp.join(ann_dir, name)
    good = np.asarray(Image.open(path))

    Image.fromarray(good[:-3]).save(path)  # 3 rows short
    with pytest.raises(ValueError, match=name) as err:
        _ade_pipeline_dataset(root)[0]
    assert 'size' in str(err.value)

    bad = good.copy()
    bad[20, 20] = 200  # class 199 after reduce_zero_label: outside 150 classes
    Image.fromarray(bad).save(path)
    with pytest.raises(ValueError, match=name) as err:
        _ade_pipeline_dataset(root)[0]
    assert '199' in str(err.value)
