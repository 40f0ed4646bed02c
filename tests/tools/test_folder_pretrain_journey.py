"""The "pretrain on my own folder of images" journey, as a user runs it.

A plain folder of real photographs (nested and flat, mixed extensions and case, no labels)
-> ``tools/train.py configs/pretrain/*_folder.py`` with the documented data key
-> ``tools/convert/pretrain_to_backbone.py`` -> ``tools/extract_features.py`` on the
exported file with no ``--arch`` / ``--override``: the features must be those of the
trained teacher backbone.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dino_mm.engine.checkpoint import safe_torch_load

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PY = sys.executable
# A tiny ViT (the record must carry every one of these to the feature tool).
TINY_VIT = dict(embed_dim=48, depth=2, num_heads=2)


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
    """12 real photographs, nested and flat, as .jpg / .JPEG / .png / .PNG / .bmp / .webp."""
    from skimage import data
    photos = {
        'astronaut': data.astronaut(), 'chelsea': data.chelsea(), 'coffee': data.coffee(),
        'rocket': data.rocket(), 'camera': data.camera(), 'cat2': data.cat(),
        'coins': data.coins(), 'moon': data.moon(), 'page': data.page(),
        'ihc': data.immunohistochemistry(), 'motorcycle': data.stereo_motorcycle()[0],
        'horse': (data.horse() * 255).astype(np.uint8),
    }
    names = ['flat_a.jpg', 'flat_b.PNG', 'trip/day1/c.jpeg', 'trip/day1/d.png',
             'trip/day2/e.JPG', 'trip/f.bmp', 'misc/g.webp', 'misc/h.png', 'misc/deep/x/i.jpg',
             'j.png', 'k.Jpg', 'misc/l.tif']
    root = tmp_path_factory.mktemp('my_photos')
    for (_, img), name in zip(sorted(photos.items()), names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img)
        im = im.convert('RGB') if name.lower().endswith(('.jpg', '.jpeg')) else im
        im.thumbnail((96, 96))
        im.save(str(path))
    (root / 'notes.txt').write_text('not an image')  # ignored
    return str(root)


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _run(cmd, timeout=600):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _tiny_opts(patch: int, iters: int):
    vit = [f'model.backbone.{k}={v}' for k, v in TINY_VIT.items()]
    heads = [f'model.{h}.{k}={v}' for h in ('dino_head', 'ibot_head')
             for k, v in dict(out_dim=64, hidden_dim=32, bottleneck_dim=16).items()]
    return [*vit, *heads,
            'train_dataloader.batch_size=4', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'train_dataloader.pin_memory=False',
            f'train_dataloader.dataset.pipeline.1.global_crops_size={2 * patch}',
            f'train_dataloader.dataset.pipeline.1.local_crops_size={patch}',
            'train_dataloader.dataset.pipeline.1.local_crops_number=2',
            f'train_cfg.max_iters={iters}', f'default_hooks.checkpoint.interval={iters}',
            'default_hooks.logger.interval=1']


@pytest.mark.parametrize('config,patch', [('dinov2_vits14_folder', 14),
                                          ('dinov3_vits16_folder', 16)])
def test_folder_pretrain_export_and_features_without_overrides(photo_folder, tmp_path,
                                                              config, patch):
    work = str(tmp_path / 'work')
    cfg_path = osp.join('configs', 'pretrain', f'{config}.py')
    opts = _tiny_opts(patch, iters=3)
    if config.startswith('dinov2'):  # DINOv2's iBOT shares the DINO head (ibot_head=None)
        opts = [o for o in opts if not o.startswith('model.ibot_head')]
    # The documented command (README "Pretrain on your own images"), tiny overrides added.
    _run([PY, 'tools/train.py', cfg_path, '--work-dir', work, '--cfg-options',
          f'train_dataloader.dataset.data_root={photo_folder}', *opts])
    ckpt_path = osp.join(work, 'iter_3.pth')
    ckpt = safe_torch_load(ckpt_path)
    assert ckpt['meta']['iter'] == 3

    exported = str(tmp_path / 'my_backbone.pth')
    p = _run([PY, 'tools/convert/pretrain_to_backbone.py', ckpt_path, exported])
    assert 'architecture recorded' in p.stdout
    # Readable with the plain safe loader; the record is plain data next to the weights.
    saved = torch.load(exported, map_location='cpu', weights_only=True)
    rec = saved['dino_mm_arch']
    assert rec['arch'] == config.replace('_folder', '')
    assert {k: rec[k] for k in TINY_VIT} == TINY_VIT
    assert rec['img_size'] == 224 and (rec.get('patch_size', patch) == patch)
    teacher = {k[len('teacher.backbone.'):]: v for k, v in ckpt['state_dict'].items()
               if k.startswith('teacher.backbone.')}
    assert set(saved['state_dict']) == set(teacher)
    for k, v in teacher.items():
        assert torch.equal(saved['state_dict'][k], v), k

    # The feature tool on the exported file: no --arch, no --override (fp32: compared
    # with an fp32 reference below).
    out = str(tmp_path / 'feats')
    _run([PY, 'tools/extract_features.py', photo_folder, '--weights', exported, '--out', out,
          '--size', str(4 * patch), '--no-progress', '--shard-size', '100',
          '--precision', 'fp32'])
    with open(osp.join(out, 'index.json')) as f:
        index = json.load(f)
    assert len(index['images']) == 12  # every image, nested and flat; notes.txt ignored
    from dino_mm.apis.extract import load_shard
    cls = load_shard(out, 0, index['settings']['format'], ['cls'])['cls']
    assert cls.shape == (12, TINY_VIT['embed_dim'])

    # Reference: the teacher backbone of the training checkpoint, built by hand.
    from dino_mm.apis.extractors import BackboneFeatures
    from dino_mm.apis.image_io import load_image, to_tensor
    from dino_mm.models.backbones import DinoVisionTransformer
    kwargs = {k: v for k, v in rec.items() if k != 'arch'}
    ref = DinoVisionTransformer(rec['arch'], **kwargs)
    ref.load_state_dict(teacher, strict=True)
    ref.eval()
    bf = BackboneFeatures(ref)
    x = torch.stack([to_tensor(load_image(p), (4, 4), patch, bf.mean, bf.std)
                     for p in index['images']])
    with torch.no_grad():
        want = ref.forward_features(x)['x_norm_clstoken'].numpy()
    np.testing.assert_allclose(cls, want, rtol=1e-4, atol=1e-5)
    # ... and not those of the same architecture at random init (the weights matter).
    torch.manual_seed(0)
    rand = DinoVisionTransformer(rec['arch'], **kwargs)
    rand.init_weights()
    rand.eval()
    with torch.no_grad():
        other = rand.forward_features(x)['x_norm_clstoken'].numpy()
    assert not np.allclose(cls, other, atol=1e-3)

    # The hub and the backbone-file loader use the record too (no overrides).
    from dino_mm import hub
    model = getattr(hub, rec['arch'])(weights=exported)
    for k, v in model.state_dict().items():
        if k in teacher:
            assert torch.equal(v, teacher[k]), k


def test_folder_config_names_the_key_when_the_folder_is_missing_or_empty(tmp_path):
    from mmengine.config import Config

    from dino_mm.registry import DATASETS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain', 'dinov2_vitb14_folder.py'))
    ds = cfg.train_dataloader.dataset
    assert ds.type == 'dino_mm.ImageFolderDataset' and cfg.model.backbone.arch == \
        'dinov2_vitb14'
    ds.data_root = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='train_dataloader.dataset.data_root'):
        DATASETS.build(ds)
    empty = tmp_path / 'empty'
    (empty / 'sub').mkdir(parents=True)
    (empty / 'sub' / 'readme.txt').write_text('x')
    ds.data_root = str(empty)
    with pytest.raises(FileNotFoundError, match=str(empty)):
        DATASETS.build(ds)


def test_exported_record_drives_the_eval_backbone_and_rejects_a_wrong_arch(tmp_path):
    """``backbone_checkpoint`` of the frozen-feature evaluations and the hub use the
    record; a hub name that contradicts it is refused with the file named."""
    from dino_mm.models.backbones import DinoVisionTransformer, build_backbone_from_file
    from dino_mm.models.converters import save_state_dict_file
    from dino_mm.registry import MODELS
    rec = dict(arch='dinov2_vits14', img_size=56, **TINY_VIT)
    torch.manual_seed(1)
    vit = DinoVisionTransformer('dinov2_vits14', img_size=56, **TINY_VIT)
    vit.init_weights()
    sd = vit.state_dict()
    pth = save_state_dict_file(sd, str(tmp_path / 'b.pth'), arch=rec)
    st = save_state_dict_file(sd, str(tmp_path / 'b.safetensors'), arch=rec)
    for path in (pth, st):
        model = build_backbone_from_file(path)
        assert model.embed_dim == 48 and len(model.blocks) == 2
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), k
        # an eval config that names the stock ViT-S/14 (embed 384, depth 12)
        frozen = MODELS.build(dict(
            type='dino_mm.FrozenFeatureModel', backbone_checkpoint=path,
            backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14',
                          out_type='cls')))
        assert frozen.backbone.embed_dim == 48
        assert torch.equal(frozen.backbone.state_dict()['cls_token'], sd['cls_token'])
    with pytest.raises(ValueError, match="b.pth records arch 'dinov2_vits14'.*not 'dinov2_vitb14'"):
        from dino_mm import hub
        hub.dinov2_vitb14(weights=pth)
    # explicit overrides still win over the record
    with pytest.raises(RuntimeError, match='mis-shaped|does not match'):
        build_backbone_from_file(pth, img_size=112)
