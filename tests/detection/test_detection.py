"""Detection: ViT -> multi-scale neck, mmdet DINO end to end on a tiny COCO set."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dino_mm.utils import register_all_modules

register_all_modules(init_default_scope=False)

from dino_mm.registry import MODELS  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_CFG = osp.join(ROOT, 'tests', 'data', 'configs', 'det_dino_tiny.py')


def _write_tiny_coco(root, real_images, degenerate=False, missing=False):
    """4 real photographs (non-square, 96x128) with 1-2 boxes each, COCO json layout."""
    images, anns = [], []
    names = ['astronaut', 'chelsea', 'coffee', 'rocket']
    for split in ('train2017', 'val2017'):
        os.makedirs(osp.join(root, split), exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    aid = 1
    for i, name in enumerate(names):
        img = Image.fromarray(real_images[name]).resize((128, 96), Image.BILINEAR)
        fname = f'{i:012d}.jpg'
        for split in ('train2017', 'val2017'):
            img.save(osp.join(root, split, fname))
        images.append(dict(id=i + 1, file_name=fname, width=128, height=96))
        boxes = [[10 + 5 * i, 12, 40, 30, 1]] + ([[60, 40, 50, 44, 2]] if i % 2 else [])
        for x, y, w, h, c in boxes:
            anns.append(dict(id=aid, image_id=i + 1, category_id=c, bbox=[x, y, w, h],
                             area=w * h, iscrowd=0))
            aid += 1
    if degenerate:
        anns.append(dict(id=aid, image_id=1, category_id=1, bbox=[5, 5, 0, 10], area=0,
                         iscrowd=0))
    if missing:
        images.append(dict(id=99, file_name='does_not_exist.jpg', width=128, height=96))
        anns.append(dict(id=aid + 1, image_id=99, category_id=1, bbox=[1, 1, 10, 10],
                         area=100, iscrowd=0))
    data = dict(images=images, annotations=anns,
                categories=[dict(id=1, name='circle'), dict(id=2, name='square')])
    for split in ('train2017', 'val2017'):
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(data, f)
    return data


@pytest.mark.parametrize('arch,patch,size', [('dinov3_vits16', 16, (64, 96)),
                                             ('dinov2_vits14', 14, (56, 84))])
def test_vit_neck_shapes_and_strides_non_square(arch, patch, size):
    backbone = MODELS.build(dict(type='dino_mm.DinoVisionTransformer', arch=arch,
                                 embed_dim=32, depth=4, num_heads=2, img_size=size[0],
                                 out_indices=[0, 1, 2, 3], out_type='featmap'))
    neck = MODELS.build(dict(type='dino_mm.ViTSimpleFeaturePyramid', in_channels=32,
                             out_channels=16, in_index=(0, 1, 2, 3)))
    outs = neck(backbone(torch.randn(2, 3, *size)))
    gh, gw = size[0] // patch, size[1] // patch
    expected = [(2 * gh, 2 * gw), (gh, gw), (gh // 2, gw // 2), (gh // 4, gw // 4)]
    assert [tuple(o.shape[-2:]) for o in outs] == expected
    assert all(o.shape[:2] == (2, 16) for o in outs)
    # strides relative to the input: p/2, p, 2p, 4p
    assert [size[0] / o.shape[-2] for o in outs[:2]] == [patch / 2, patch]


def test_convnext_with_channel_mapper_non_square():
    backbone = MODELS.build(dict(type='dino_mm.DinoConvNeXt', arch='tiny',
                                 out_indices=(1, 2, 3)))
    neck = MODELS.build(dict(type='mmdet.ChannelMapper', in_channels=[192, 384, 768],
                             kernel_size=1, out_channels=32, act_cfg=None,
                             norm_cfg=dict(type='GN', num_groups=8), num_outs=4))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = neck(backbone(x))
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 12), (4, 6), (2, 3), (1, 2)]


def test_ground_truth_as_prediction_gives_ap_1(tmp_path, real_images):
    root = str(tmp_path / 'coco')
    data = _write_tiny_coco(root, real_images)
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=osp.join(root, 'annotations', 'instances_val2017.json'),
                        metric='bbox')
    metric.dataset_meta = dict(classes=('circle', 'square'))
    samples = []
    for img in data['images']:
        boxes = [a for a in data['annotations'] if a['image_id'] == img['id']]
        xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                             (a['bbox'] for a in boxes)], dtype=torch.float32)
        samples.append(dict(img_id=img['id'], ori_shape=(96, 128), pred_instances=dict(
            bboxes=xyxy, scores=torch.ones(len(boxes)),
            labels=torch.tensor([a['category_id'] - 1 for a in boxes]))))
    metric.process({}, samples)
    res = metric.evaluate(len(samples))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0)
    assert res['coco/bbox_mAP_50'] == pytest.approx(1.0)


def test_train_and_test_tools_end_to_end(tmp_path, real_images):
    root = str(tmp_path / 'coco') + '/'
    _write_tiny_coco(root, real_images)
    wd = str(tmp_path / 'wd')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    opts = ['--cfg-options', f'data_root={root}',
            f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.data_root={root}',
            f'val_evaluator.ann_file={root}annotations/instances_val2017.json',
            f'test_evaluator.ann_file={root}annotations/instances_val2017.json']
    p = subprocess.run([sys.executable, 'tools/train.py', TINY_CFG, '--work-dir', wd, *opts],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    ckpt = osp.join(wd, 'epoch_1.pth')
    assert osp.isfile(ckpt)
    show = str(tmp_path / 'show')
    out = str(tmp_path / 'metrics.json')
    p = subprocess.run([sys.executable, 'tools/test.py', TINY_CFG, ckpt, '--work-dir', wd,
                        '--show-dir', show, '--out', out, *opts], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    metrics = json.load(open(out))
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    pngs = [f for _, _, fs in os.walk(show) for f in fs if f.endswith(('.jpg', '.png'))]
    assert len(pngs) == 4
    Image.open(osp.join(show, pngs[0]) if osp.exists(osp.join(show, pngs[0])) else
               next(osp.join(d, f) for d, _, fs in os.walk(show) for f in fs)).verify()


def _dataset(root, **kw):
    from dino_mm.datasets.detection import CheckedCocoDataset
    return CheckedCocoDataset(data_root=root, ann_file='annotations/instances_train2017.json',
                              data_prefix=dict(img='train2017/'),
                              metainfo=dict(classes=('circle', 'square')), pipeline=[],
                              **kw)


def test_bad_annotations_error_or_skip(tmp_path, real_images):
    root = str(tmp_path / 'bad') + '/'
    _write_tiny_coco(root, real_images, degenerate=True)
    with pytest.raises(ValueError, match=r'instances_train2017.json.*degenerate box'):
        _dataset(root)
    ds = _dataset(root, on_invalid='skip')
    assert ds.num_skipped_boxes == 1 and len(ds) == 4

    root2 = str(tmp_path / 'missing') + '/'
    _write_tiny_coco(root2, real_images, missing=True)
    with pytest.raises(ValueError, match='does_not_exist.jpg'):
        _dataset(root2)
    ds = _dataset(root2, on_invalid='skip')
    assert ds.num_skipped_images == 1 and len(ds) == 4
