"""Flip test-time augmentation of the depth leaves (``tools/test.py --tta``).

The TTA prediction must be the mean of the estimator's depth for the image and the
flipped-back depth for its mirror (the official DINOv3 ``use_tta``), built from the leaves'
own ``tta_pipeline`` on a tiny NYU-layout dataset; through ``tools/test.py`` on a shipped
leaf the same numbers come out and ``--out FILE.pkl`` holds them, one entry per image.
"""
import copy
import glob
import os.path as osp

import cv2
import mmengine
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.structures import PixelData

from tests.depth.test_depth_e2e import _tool, _write_nyu
from tests.depth.test_depth_pretrained import _tiny_estimator_cfg

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAF = osp.join(ROOT, 'configs/depth/dinov2-vits14_linear_8xb2-38k_nyu.py')
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
H, W = 42, 59  # 59 = 4 * 14 + 3: odd center padding, so the mirror is not a plain flip


def _estimator(seed=0):
    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(seed)
    model = MODELS.build(_tiny_estimator_cfg(LEAF))
    with torch.no_grad():  # a head far from its near-constant init: flips change the map
        model.decode_head.conv_depth.weight.normal_(0, 1.0)
        model.backbone.pos_embed.normal_(0, 1.0)
    return model.eval()


def _reference(model, img_path):
    """Mean of the depth of the image and the flipped-back depth of its mirror."""
    img = cv2.imread(img_path)
    x = torch.from_numpy(((img[..., ::-1] - MEAN) / STD).transpose(2, 0, 1).copy()).float()
    plain = model.estimate_depth(x[None])[0]
    mirrored = model.estimate_depth(x.flip(-1)[None])[0]
    return plain, mirrored, (plain + mirrored.flip(-1)) / 2


def _tta_dataset(data_root):
    from dino_mm.datasets.depth import NYUDepthDataset
    from dino_mm.utils.scope import add_prefix_scopes
    pipeline = add_prefix_scopes(copy.deepcopy(Config.fromfile(LEAF).tta_pipeline))
    return NYUDepthDataset(ann_file='nyu_test.txt', data_root=str(data_root),
                           test_mode=True, pipeline=pipeline)


def test_tta_is_mean_of_image_and_flipped_back_mirror(tmp_path, real_images):
    from dino_mm.models.depth import DepthTTAModel
    _write_nyu(tmp_path, [real_images['chelsea']], h=H, w=W)
    ds = _tta_dataset(tmp_path)
    sample = ds[0]
    assert [s.flip for s in sample['data_samples']] == [False, True]
    model = _estimator()
    tta = DepthTTAModel(module=model).eval()
    with torch.no_grad():
        merged = tta.test_step(pseudo_collate([sample]))
    assert len(merged) == 1
    got = merged[0].pred_depth_map.data
    plain, mirrored, expected = _reference(model, ds.get_data_info(0)['img_path'])
    assert got.shape == (1, H, W)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The check has teeth: no flip-back, or no second view, is far from it.
    assert (got - (plain + mirrored) / 2).abs().max() > 1e-2
    assert (got - plain).abs().max() > 1e-2
    # Metric-side fields come from the unflipped view.
    assert merged[0].flip is False
    gt = cv2.imread(str(tmp_path / 'kitchen_0001/sync_depth_0.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(merged[0].gt_depth_map.data[0].numpy(), gt / 1000.0,
                               rtol=1e-6)


def _view(depth, flip, direction='horizontal', gt=None, **meta):
    from mmseg.structures import SegDataSample
    s = SegDataSample(metainfo=dict(img_path='a.jpg', **meta,
                                    **({} if flip is None else dict(
                                        flip=flip, flip_direction=direction if flip
                                        else None))))
    s.pred_depth_map = PixelData(data=depth)
    if gt is not None:
        s.gt_depth_map = PixelData(data=gt)
    return s


def test_merge_needs_flip_meta_and_same_sizes():
    from dino_mm.models.depth import DepthTTAModel
    merge = DepthTTAModel._merge_views
    d = torch.rand(1, 4, 5)
    with pytest.raises(KeyError, match="a.jpg has no 'flip' meta key.*meta_keys"):
        merge([_view(d, False), _view(d, None)])
    with pytest.raises(ValueError, match='a.jpg.*different sizes'):
        merge([_view(d, False), _view(torch.rand(1, 4, 6), True)])
    # Only mirrored views: the (mirrored) ground truth is flipped back.
    gt = torch.arange(20.).reshape(1, 4, 5)
    out = merge([_view(d, True, gt=gt.flip(-1)), _view(2 * d, True, gt=gt.flip(-1))])
    torch.testing.assert_close(out.pred_depth_map.data, 1.5 * d)
    torch.testing.assert_close(out.gt_depth_map.data, gt)
    assert out.flip is False


def test_tools_test_tta_on_a_shipped_leaf(tmp_path, real_images):
    """``tools/test.py <leaf> CKPT --tta --out preds.pkl``: a tiny model through
    --cfg-options; the dumped predictions equal the flip average of the same weights."""
    data_root = tmp_path / 'nyu'
    _write_nyu(data_root, [real_images['astronaut'], real_images['coffee']], h=H, w=W)
    model = _estimator(seed=3)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    out = tmp_path / 'preds.pkl'
    metrics = _tool('test').main([
        LEAF, str(ckpt), '--tta', '--work-dir', str(tmp_path / 'work'), '--out', str(out),
        '--cfg-options', 'model.backbone.depth=2', 'model.backbone.embed_dim=32',
        'model.backbone.num_heads=2', 'model.backbone.out_indices=[1]',
        'model.decode_head.in_channels=[64]', f'test_dataloader.dataset.data_root={data_root}',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'])
    assert 0 < metrics['depth/rmse'] < 10
    preds = mmengine.load(str(out))
    assert len(preds) == 2
    for i, pred in enumerate(preds):
        assert pred['img_path'].endswith(f'rgb_{i}.jpg')
        assert 'gt_depth_map' not in pred  # predictions only
        _, _, expected = _reference(model, pred['img_path'])
        torch.testing.assert_close(pred['pred_depth_map']['data'], expected,
                                   rtol=1e-5, atol=1e-5)
    logs = glob.glob(str(tmp_path / 'work' / '*' / '*.json'))
    assert logs and 'depth/rmse' in open(logs[0]).read()  # metrics still logged
