"""Every depth leaf loads the official pretrained backbone, or fails naming the file.

The depth protocols probe a *frozen* pretrained backbone: a leaf that left it random
would train a head on noise and still run to the end. Each leaf names the official file
(like the segmentation leaves, ``checkpoints/<official name>``); the file is found where
the hub finds weights (``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights``, torch.hub's
checkpoint folder), and a missing file stops ``init_weights`` -- what the runner calls
before the first training iteration -- with an error naming it.
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from dino_mm.hub.backbones import BACKBONE_WEIGHTS
from dino_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAVES = sorted(glob.glob(osp.join(ROOT, 'configs/depth/*_8xb2-38k_*.py')))
DIM = 32
TINY = dict(depth=2, embed_dim=DIM, num_heads=2)


def _official_name(arch):
    tag = 'LVD142M' if arch.startswith('dinov2') else 'LVD1689M'
    return BACKBONE_WEIGHTS[arch][tag]


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """Empty weight folders and an empty working directory."""
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path / 'weights'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    (tmp_path / 'weights').mkdir()
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')
    return tmp_path


def _tiny_estimator_cfg(leaf):
    cfg = Config.fromfile(leaf).model
    head = osp.basename(leaf).split('_')[1]
    n = len(cfg.backbone.out_indices)
    cfg.backbone.update(TINY, out_indices=[1] if n == 1 else [0, 1, 1, 1])
    dh = cfg.decode_head
    if dh.get('norm_cfg'):
        dh.norm_cfg = dict(type='BN')  # SyncBN needs a process group
    if head == 'dpt':
        dh.update(embed_dims=DIM, post_process_channels=[4, 8, 16, 32], channels=8)
    else:
        cls_token = cfg.backbone.out_type == 'cls_featmap'  # DINOv2: (patch, cls) pairs
        dh.update(in_channels=[(2 if cls_token else 1) * DIM] * n)
    return cfg


def _random_official_file(arch, path, seed=0):
    """A tiny backbone's weights in the official layout, randomised."""
    from dino_mm.models.backbones import DinoVisionTransformer
    torch.manual_seed(seed)
    src = DinoVisionTransformer(arch, **TINY)
    sd = {k: (v if k.endswith(('bias_mask', 'periods')) else torch.randn_like(v))
          for k, v in src.state_dict().items()}
    torch.save(sd, path)
    return sd


def test_all_leaves_present():
    assert len(LEAVES) == 48


@pytest.mark.parametrize('leaf', LEAVES, ids=osp.basename)
def test_leaf_names_the_official_backbone_file(leaf):
    bb = Config.fromfile(leaf).model.backbone
    init = bb.get('init_cfg')
    assert init is not None and init.get('type') == 'Pretrained', (
        f'{osp.basename(leaf)} probes a randomly initialised frozen backbone')
    assert init.checkpoint == f'checkpoints/{_official_name(bb.arch)}'
    assert f'# Backbone weights: {init.checkpoint}' in open(leaf).read()


@pytest.mark.parametrize('leaf', LEAVES, ids=osp.basename)
def test_leaf_loads_the_file_from_the_weights_dir(leaf, no_weights_anywhere):
    cfg = _tiny_estimator_cfg(leaf)
    arch = cfg.backbone.arch
    sd = _random_official_file(arch, no_weights_anywhere / 'weights' / _official_name(arch))
    model = MODELS.build(cfg)
    model.init_weights()  # what Runner.train() calls before the first iteration
    got = model.backbone.state_dict()
    assert sorted(got) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    assert not any(p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize('leaf', [LEAVES[0], LEAVES[-1]], ids=osp.basename)
def test_missing_file_fails_naming_it(leaf, no_weights_anywhere):
    cfg = _tiny_estimator_cfg(leaf)
    model = MODELS.build(cfg)
    name = _official_name(cfg.backbone.arch)
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    msg = str(err.value)
    assert name in msg and 'checkpoints/' in msg
    assert str(no_weights_anywhere / 'weights') in msg and 'DINO_MM_WEIGHTS' in msg
    assert 'init_cfg' in msg


def test_checkpoints_folder_of_the_working_dir_is_used_first(no_weights_anywhere):
    leaf = osp.join(ROOT, 'configs/depth/dinov2-vits14_linear4_8xb2-38k_nyu.py')
    cfg = _tiny_estimator_cfg(leaf)
    name = _official_name(cfg.backbone.arch)
    (no_weights_anywhere / 'cwd' / 'checkpoints').mkdir()
    local = _random_official_file('dinov2_vits14',
                                  no_weights_anywhere / 'cwd' / 'checkpoints' / name, seed=1)
    _random_official_file('dinov2_vits14', no_weights_anywhere / 'weights' / name, seed=2)
    model = MODELS.build(cfg)
    model.init_weights()
    assert torch.equal(model.backbone.cls_token, local['cls_token'])


def test_a_non_official_missing_path_still_names_it(no_weights_anywhere):
    from dino_mm.models.backbones import DinoVisionTransformer
    model = DinoVisionTransformer('dinov2_vits14', **TINY, init_cfg=dict(
        type='Pretrained', checkpoint='work/my_backbone.pth'))
    with pytest.raises(FileNotFoundError, match=r'work/my_backbone\.pth'):
        model.init_weights()
