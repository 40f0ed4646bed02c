"""Registries: dino_mm.* and mmseg.* / mmpretrain.* types resolve from one config."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS

from dino_mm.registry import DATASETS, HOOKS, METRICS, MODELS, TRANSFORMS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

TINY_VIT = dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', img_size=28,
                patch_size=14, embed_dim=32, depth=1, num_heads=2)


def test_registries_are_children_of_mmengine_roots():
    for reg in (MODELS, DATASETS, TRANSFORMS, HOOKS, METRICS):
        assert reg.scope == 'dino_mm'
        assert reg.parent is not None and reg.parent.scope == 'mmengine'
        assert reg._locations, f'{reg.name} registry has no import locations'


def test_dino_mm_type_resolves_from_root_registry():
    model = ROOT_MODELS.build(dict(TINY_VIT))
    assert type(model).__name__ == 'DinoVisionTransformer'
    assert model(torch.randn(1, 3, 28, 28)).shape == (1, 32)


def test_mmseg_and_dino_mm_types_in_one_config(tmp_path):
    cfg_file = tmp_path / 'mixed.py'
    cfg_file.write_text(
        'default_scope = "dino_mm"\n'
        f'backbone = {TINY_VIT!r}\n'
        'head = dict(type="mmseg.FCNHead", in_channels=32, channels=8, num_convs=1,\n'
        '            num_classes=3, norm_cfg=None)\n')
    cfg = Config.fromfile(str(cfg_file))
    backbone = MODELS.build(cfg.backbone)
    head = MODELS.build(cfg.head)
    assert type(head).__module__.startswith('mmseg')
    feats = backbone.get_intermediate_layers(torch.randn(1, 3, 28, 28), n=1, reshape=True)
    assert head(list(feats)).shape == (1, 3, 2, 2)


def test_unknown_type_error_names_type_and_registry():
    with pytest.raises(KeyError, match=r'NoSuchModule.*registry'):
        MODELS.build(dict(type='dino_mm.NoSuchModule'))


def test_register_all_modules_imports_dense_task_glue():
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    import sys
    for mod in ('dino_mm.models.segmentation', 'dino_mm.models.depth',
                'dino_mm.models.detection', 'dino_mm.evaluation'):
        assert mod in sys.modules


def test_config_inheritance_through_base():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'vit-tiny_cls_digits.py'))
    # from configs/_base_/default_runtime.py
    assert cfg.default_scope == 'dino_mm'
    assert cfg.default_hooks.timer.type == 'IterTimerHook'
    # checkpoints: MMEngine's hook name, served by dino_mm's SafeCheckpointHook
    from mmengine.registry import HOOKS as MMENGINE_HOOKS
    from dino_mm.engine.checkpoint import SafeCheckpointHook
    assert MMENGINE_HOOKS.get(cfg.default_hooks.checkpoint.type) is SafeCheckpointHook
    # overridden in the leaf, merged key by key
    assert cfg.default_hooks.logger.interval == 10
    assert cfg.default_hooks.checkpoint.interval == 50
    assert cfg.default_hooks.checkpoint.by_epoch is False
    assert cfg.model.backbone.type == 'dino_mm.DinoVisionTransformer'
