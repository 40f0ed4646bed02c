"""``tools/test.py <detection leaf> CKPT --tta --out preds.pkl`` on a tiny COCO set.

A shipped leaf with the tiny DINO of tests/data/configs/det_dino_tiny.py swapped in; the
leaf's own ``tta_model`` (mmdet ``DetTTAModel``) and ``tta_pipeline`` (image + mirror) are
used. Every merged box must be a box the detector finds on the image, or a box it finds on
the mirror, flipped back -- so the mirrored view is really flipped back, not mixed in raw.
"""
import copy
import glob
import importlib.util
import os.path as osp

import mmengine
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope

from tests.detection.test_detection import TINY_CFG, _write_tiny_coco
from tests.oracles import require

require('mmcv.ops')  # DetTTAModel merges with mmcv's batched NMS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAF = osp.join(ROOT, 'configs/detection/dino-4scale_dinov2-vits14-frozen_sfp_8xb2-12e_coco.py')
CLASSES = ('circle', 'square')
W, H = 128, 96  # the tiny COCO images


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'_dino_mm_det_tool_{name}',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_leaf(tmp_path, root):
    """The leaf with the tiny detector and the tiny data; the TTA settings are the leaf's."""
    cfg = Config.fromfile(LEAF)
    arch, pad = cfg.model.backbone.arch, cfg.model.data_preprocessor.pad_size_divisor
    cfg.merge_from_dict(dict(model=Config.fromfile(TINY_CFG).model))
    cfg.model.backbone.update(arch=arch, init_cfg=None)
    cfg.model.data_preprocessor.pad_size_divisor = pad  # the leaf's patch-size multiple
    loader = cfg.test_dataloader
    loader.update(num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=root, metainfo=dict(classes=CLASSES))
    cfg.test_evaluator.ann_file = root + 'annotations/instances_val2017.json'
    resize = cfg.tta_pipeline[1].transforms[0][0]
    assert resize.type == 'Resize'
    resize.scale = (W, H)  # tiny images stay tiny, as in the tiny config's test_pipeline
    cfg.visualizer.name = 'det_tta_test_visualizer'
    path = str(tmp_path / 'tiny_leaf.py')
    cfg.dump(path)
    return path, cfg


def _scoped(part):
    """A copy of a config part with the `_scope_` keys that tools/test.py adds."""
    from dino_mm.utils.scope import add_prefix_scopes
    return add_prefix_scopes(copy.deepcopy(part))


def _tta_dataset(cfg):
    """The test set through the leaf's tta_pipeline."""
    from mmengine.registry import DATASETS
    ds_cfg = _scoped(cfg.test_dataloader.dataset)
    ds_cfg.pipeline = _scoped(cfg.tta_pipeline)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(ds_cfg)


def _views_predictions(model, views):
    """The detector's boxes on the image and on its mirror (mirror boxes flipped back)."""
    assert [s.flip for s in views['data_samples']] == [False, True]
    boxes = []
    with torch.no_grad():
        for img, sample in zip(views['inputs'], views['data_samples']):
            pred = model.test_step(pseudo_collate([dict(inputs=img, data_samples=sample)]))
            b = pred[0].pred_instances.bboxes.clone()
            if sample.flip:
                b[:, [0, 2]] = W - b[:, [2, 0]]
            boxes.append(b)
    return boxes


def test_detection_leaf_flip_tta_through_tools(tmp_path, real_images):
    root = str(tmp_path / 'coco') + '/'
    _write_tiny_coco(root, real_images)
    config, cfg = _tiny_leaf(tmp_path, root)
    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(_scoped(cfg.model))
        model.init_weights()  # mmdet DINO leaves some parameters uninitialised until then
    model.eval()
    ckpt = tmp_path / 'tiny_det.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)

    out = str(tmp_path / 'preds.pkl')
    metrics = _tool('test').main([config, str(ckpt), '--tta', '--out', out,
                                  '--work-dir', str(tmp_path / 'work')])
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    preds = mmengine.load(out)
    assert len(preds) == 4  # one entry per test image
    from_mirror = 0
    dataset = _tta_dataset(cfg)
    for i, pred in enumerate(preds):
        assert pred['img_id'] == i + 1 and 'gt_instances' not in pred
        merged = pred['pred_instances']['bboxes']
        assert 0 < len(merged) <= cfg.tta_model.tta_cfg.max_per_img
        plain, mirrored = _views_predictions(model, dataset[i])
        for box in merged:
            d_plain = (plain - box).abs().max(dim=1).values.min()
            d_mirror = (mirrored - box).abs().max(dim=1).values.min()
            assert min(d_plain, d_mirror) < 1e-3, box
            from_mirror += int(d_mirror < 1e-3 and d_plain > 1e-3)
    assert from_mirror > 0  # the mirrored view contributes boxes
    logs = glob.glob(str(tmp_path / 'work' / '*' / '*.json'))
    assert logs and 'coco/bbox_mAP' in open(logs[0]).read()
