"""Every depth leaf config loads, agrees with its dataset and states the published number."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAVES = sorted(glob.glob(osp.join(ROOT, 'configs/depth/*_8xb2-38k_*.py')))
RMSE = {'dinov2-vits14': '0.417', 'dinov2-vitb14': '0.362', 'dinov2-vitl14': '0.333',
        'dinov2-vitg14': '0.298', 'dinov3-vits16': '0.403', 'dinov3-vitb16': '0.373',
        'dinov3-vitl16': '0.352', 'dinov3-vit7b16': '0.309'}


def test_all_leaves_present():
    assert len(LEAVES) == 8 * 3 * 2


@pytest.mark.parametrize('path', LEAVES, ids=osp.basename)
def test_leaf(path):
    name = osp.basename(path)
    model_name, head, _, data = name[:-3].split('_')
    cfg = Config.fromfile(path)
    text = open(path).read()
    assert text.count('\n') < 15  # leaves stay short; the bases carry the rest
    if data == 'nyu':
        assert RMSE[model_name] in text
    max_depth = 10.0 if data == 'nyu' else 80.0
    assert cfg.model.decode_head.max_depth == max_depth == cfg.test_evaluator.max_depth
    assert cfg.test_evaluator.crop == ('nyu_eigen' if data == 'nyu' else 'kitti_garg')
    bb = cfg.model.backbone
    assert bb.arch == model_name.replace('-', '_')
    n = 1 if head == 'linear' else 4
    assert len(bb.out_indices) == n
    if head != 'dpt':
        per_layer = cfg.model.decode_head.in_channels[0]
        assert len(cfg.model.decode_head.in_channels) == n
        assert per_layer in (384, 768, 1024, 4096, 768 * 2, 384 * 2, 1024 * 2, 1536 * 2)
    assert cfg.default_hooks.visualization.type == 'dino_mm.DepthVisualizationHook'
    # tools/test.py --tta: image + horizontal mirror, with the flip meta keys packed.
    assert cfg.tta_model.type == 'dino_mm.DepthTTAModel'
    views, pack = cfg.tta_pipeline[-1].transforms
    assert [(v.type, v.prob, v.direction) for v in views] == [
        ('mmseg.RandomFlip', 0., 'horizontal'), ('mmseg.RandomFlip', 1., 'horizontal')]
    assert {'flip', 'flip_direction'} <= set(pack[0].meta_keys)
