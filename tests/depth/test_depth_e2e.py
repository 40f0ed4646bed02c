"""End to end: NYU- and KITTI-format datasets on disk (real photographs, 16-bit depth PNGs
of known smooth surfaces), a few training iterations of each head through tools/train.py,
evaluation through tools/test.py, and metrics checked against an independent numpy
computation on the same predictions; bad depth files give errors naming the file."""
import importlib.util
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DIM = 32
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'_dino_mm_tool_{name}',
                                                  osp.join(ROOT, 'tools', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_nyu(root, images, h=42, w=56):
    """NYU layout: <scene>/rgb_i.jpg + sync_depth_i.png (uint16 mm), BTS list lines."""
    (root / 'kitchen_0001').mkdir(parents=True)
    yy, xx = np.mgrid[0:h, 0:w]
    lines = []
    for i, img in enumerate(images):
        rgb = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / f'kitchen_0001/rgb_{i}.jpg'), rgb[..., ::-1])
        depth = 1.0 + 4.0 * yy / h + (1.0 + i) * xx / w  # tilted plane, metres
        depth[:2] = 0  # unmeasured rows
        cv2.imwrite(str(root / f'kitchen_0001/sync_depth_{i}.png'),
                    np.round(depth * 1000).astype(np.uint16))
        lines.append(f'/kitchen_0001/rgb_{i}.jpg /kitchen_0001/sync_depth_{i}.png 518.8579')
    (root / 'nyu_train.txt').write_text('\n'.join(lines) + '\n')
    (root / 'nyu_test.txt').write_text('\n'.join(lines) + '\n')


def _write_kitti(root, images, h=47, w=100):
    """KITTI layout: raw/<drive>/image_02/data/*.png, gt/<drive>/.../*.png (uint16, x256),
    sparse ground truth; one list line without ground truth ('None') is skipped."""
    drive = '2011_09_26/2011_09_26_drive_0001_sync'
    (root / 'raw' / drive / 'image_02/data').mkdir(parents=True)
    (root / 'gt' / drive / 'proj_depth/groundtruth/image_02').mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    lines = []
    for i, img in enumerate(images):
        name = f'{i:010d}.png'
        cv2.imwrite(str(root / 'raw' / drive / 'image_02/data' / name),
                    cv2.resize(img, (w, h))[..., ::-1])
        depth = 4.0 + 60.0 * (yy / h) ** 2 + 3.0 * np.sin(xx / 9.0 + i)
        depth[rng.random((h, w)) < 0.6] = 0  # sparse LiDAR
        cv2.imwrite(str(root / 'gt' / drive / 'proj_depth/groundtruth/image_02' / name),
                    np.round(depth * 256).astype(np.uint16))
        lines.append(f'{drive}/image_02/data/{name} '
                     f'{drive}/proj_depth/groundtruth/image_02/{name} 721.5377')
    lines.append(f'{drive}/image_02/data/0000000099.png None 721.5377')
    for split in ('eigen_train_files_with_gt.txt', 'eigen_test_files_with_gt.txt'):
        (root / split).write_text('\n'.join(lines) + '\n')


def _tiny_cfg(leaf, data_root, work_dir, head, kitti=False):
    cfg = Config.fromfile(osp.join(ROOT, 'configs/depth', leaf))
    cfg.work_dir = str(work_dir)
    n = 1 if head == 'linear' else 2
    # A random tiny backbone on purpose (it has no official file); the leaves' pretrained
    # backbone files are covered by tests/depth/test_depth_pretrained.py.
    cfg.model.backbone.update(depth=2, embed_dim=DIM, num_heads=2,
                              out_indices=[1] if n == 1 else [0, 1], init_cfg=None)
    if head == 'dpt':
        cfg.model.backbone.out_indices = [0, 1, 1, 1]
        cfg.model.decode_head.update(embed_dims=DIM, post_process_channels=[4, 8, 16, 32],
                                     channels=8)
    else:
        cfg.model.decode_head.update(in_channels=[2 * DIM] * n, in_index=list(range(n)))
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[split]
        loader.update(num_workers=0, persistent_workers=False)
        loader.dataset.data_root = str(data_root)
    cfg.train_dataloader.batch_size = 2
    pipe = cfg.train_dataloader.dataset.pipeline
    for t in pipe:
        if t['type'] == 'mmseg.RandomCrop':
            t['crop_size'] = (28, 56) if kitti else (28, 42)
        if t['type'] == 'dino_mm.KBCrop':
            t.update(height=40, width=90)
    cfg.train_cfg.update(max_iters=3, val_interval=100)
    cfg.param_scheduler[0].update(total_steps=3, pct_start=0.5)
    cfg.default_hooks.checkpoint.interval = 3
    cfg.default_hooks.logger.interval = 1
    work_dir.mkdir(parents=True, exist_ok=True)
    out = osp.join(str(work_dir), 'tiny_config.py')
    cfg.dump(out)
    return out, cfg


def _reference_metrics(cfg, ckpt, data_root, crop, max_depth, scale):
    """Predictions from a freshly built model + the metrics restated in numpy."""
    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    model = MODELS.build(cfg.model)
    sd = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    model.load_state_dict(sd)
    model.eval()
    per_image = []
    ds = cfg.test_dataloader.dataset
    prefix = ds.get('data_prefix', dict(img_path='', depth_map_path=''))
    for line in open(osp.join(data_root, ds.ann_file)):
        rgb_rel, depth_rel = line.split()[:2]
        if depth_rel == 'None':
            continue
        img = cv2.imread(osp.join(data_root, prefix['img_path'], rgb_rel.lstrip('/')))
        gt = cv2.imread(osp.join(data_root, prefix['depth_map_path'], depth_rel.lstrip('/')),
                        cv2.IMREAD_UNCHANGED).astype(np.float64) / scale
        x = torch.from_numpy(((img[..., ::-1] - MEAN) / STD).transpose(2, 0, 1).copy()).float()
        pred = model.estimate_depth(x[None])[0, 0].numpy().astype(np.float64)
        h, w = gt.shape
        y1, y2, x1, x2 = crop(h, w)
        m = np.zeros_like(gt, bool)
        m[y1:y2, x1:x2] = True
        m &= (gt > 1e-3) & (gt < max_depth)
        g, p = gt[m], np.clip(pred[m], 1e-3, max_depth)
        r = np.maximum(g / p, p / g)
        e = np.log(p) - np.log(g)
        per_image.append(dict(
            a1=np.mean(r < 1.25), a2=np.mean(r < 1.25**2), a3=np.mean(r < 1.25**3),
            abs_rel=np.mean(np.abs(p - g) / g), sq_rel=np.mean((p - g)**2 / g),
            rmse=np.sqrt(np.mean((p - g)**2)), rmse_log=np.sqrt(np.mean(e**2)),
            log10=np.mean(np.abs(np.log10(p) - np.log10(g))),
            silog=100 * np.sqrt(np.mean(e**2) - np.mean(e)**2)))
    return {k: float(np.mean([d[k] for d in per_image])) for k in per_image[0]}


def _nyu_crop(h, w):
    return int(45 / 480 * h), int(471 / 480 * h), int(41 / 640 * w), int(601 / 640 * w)


def _garg_crop(h, w):
    return (int(0.40810811 * h), int(0.99189189 * h), int(0.03594771 * w),
            int(0.96405229 * w))


# The 1-layer linear head differs from linear4 only in its layer list (unit-tested in
# tests/models/depth); the KITTI run uses it to cover the single-layer config path.
@pytest.mark.parametrize('head,dataset', [('linear4', 'nyu'), ('dpt', 'nyu'),
                                          ('linear', 'kitti')])
def test_train_then_test_matches_numpy(tmp_path, real_images, head, dataset):
    kitti = dataset == 'kitti'
    data_root = tmp_path / 'data'
    imgs = [real_images['astronaut'], real_images['chelsea'], real_images['coffee']]
    (_write_kitti if kitti else _write_nyu)(data_root, imgs)
    cfg_path, cfg = _tiny_cfg(f'dinov2-vits14_{head}_8xb2-38k_{dataset}.py', data_root,
                              tmp_path / 'work', head, kitti)
    _tool('train').main([cfg_path, '--work-dir', str(tmp_path / 'work')])
    ckpt = tmp_path / 'work' / 'iter_3.pth'
    assert ckpt.is_file()
    show = tmp_path / 'show'
    metrics = _tool('test').main([
        cfg_path, str(ckpt), '--work-dir', str(tmp_path / 'test'), '--show-dir', str(show),
        '--cfg-options', f'test_dataloader.dataset.data_root={data_root}'])
    ref = _reference_metrics(cfg, str(ckpt), str(data_root),
                             _garg_crop if kitti else _nyu_crop, 80.0 if kitti else 10.0,
                             256.0 if kitti else 1000.0)
    for k, v in ref.items():
        assert metrics[f'depth/{k}'] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert 0 < metrics['depth/rmse'] < 80 and 0 <= metrics['depth/a1'] <= 1
    pngs = sorted(show.glob('*_depth.png'))
    assert len(pngs) == 3
    vis = cv2.imread(str(pngs[0]))
    h, w = (47, 100) if kitti else (42, 56)
    assert vis.shape == (h, 3 * w, 3)  # image | ground truth | prediction
    assert vis.std() > 5  # coloured, not blank


def _load(results_dir, depth_png, img_shape=(20, 30)):
    from dino_mm.datasets.depth import LoadDepthMap
    return LoadDepthMap()(dict(depth_map_path=str(depth_png), img_path='x.jpg',
                               ori_shape=img_shape, depth_scale=1000.0, max_depth=10.0,
                               seg_fields=[]))


def test_bad_depth_files_name_the_file(tmp_path):
    good = tmp_path / 'good.png'
    cv2.imwrite(str(good), np.full((20, 30), 2500, np.uint16))
    out = _load(tmp_path, good)
    assert out['gt_depth_map'].dtype == np.float32 and np.allclose(out['gt_depth_map'], 2.5)
    eight = tmp_path / 'eight_bit.png'
    cv2.imwrite(str(eight), np.full((20, 30), 200, np.uint8))
    with pytest.raises(ValueError, match='eight_bit.png.*16-bit'):
        _load(tmp_path, eight)
    with pytest.raises(ValueError, match=r'good.png has size \(20, 30\).*\(21, 30\)'):
        _load(tmp_path, good, img_shape=(21, 30))
    wrong_unit = tmp_path / 'tenth_mm.png'
    cv2.imwrite(str(wrong_unit), np.full((20, 30), 60000, np.uint16))  # 60 m "indoors"
    with pytest.raises(ValueError, match='tenth_mm.png.*beyond max_depth'):
        _load(tmp_path, wrong_unit)
    with pytest.raises(FileNotFoundError, match='missing.png'):
        _load(tmp_path, tmp_path / 'missing.png')


def test_dataset_lists(tmp_path, real_images):
    from dino_mm.datasets.depth import KITTIDepthDataset, NYUDepthDataset
    _write_nyu(tmp_path / 'nyu', [real_images['rocket']])
    ds = NYUDepthDataset(ann_file='nyu_test.txt', data_root=str(tmp_path / 'nyu'))
    info = ds.get_data_info(0)
    assert info['img_path'] == str(tmp_path / 'nyu/kitchen_0001/rgb_0.jpg')
    assert info['depth_scale'] == 1000.0 and info['focal'] == pytest.approx(518.8579)
    _write_kitti(tmp_path / 'kitti', [real_images['rocket']])
    ds = KITTIDepthDataset(ann_file='eigen_test_files_with_gt.txt',
                           data_root=str(tmp_path / 'kitti'),
                           data_prefix=dict(img_path='raw', depth_map_path='gt'))
    assert len(ds) == 1 and ds.metainfo['max_depth'] == 80.0  # 'None' line skipped
    (tmp_path / 'bad.txt').write_text('only_one_field.jpg\n')
    with pytest.raises(ValueError, match='bad.txt, line 1'):
        NYUDepthDataset(ann_file=str(tmp_path / 'bad.txt'))
