"""Frozen parts of DinoVisionTransformer stay in eval mode through ``.train()``.

A frozen DINOv3 backbone must not apply the RoPE train-time coordinate augmentation
(rescale by up to 2x in the official hub settings): with ``rope_embed`` in train mode,
two calls on the same input differ although no weight can change.
"""
import glob
import os
import os.path as osp

import pytest
import torch
from torch import nn

os.environ.setdefault('XFORMERS_DISABLED', '1')

from dino_mm.models.backbones import DinoVisionTransformer  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
FROZEN_DET = sorted(glob.glob(osp.join(ROOT, 'configs/detection/*dinov3*-frozen_*.py')))
TINY = dict(depth=3, embed_dim=32, num_heads=2)


def _training_leaves(model):
    """Names of leaf modules left in train mode (nn.Identity does nothing either way)."""
    return sorted(n for n, m in model.named_modules()
                  if m.training and not list(m.children()) and not isinstance(m, nn.Identity))


def _two_calls(model, x):
    with torch.no_grad():
        return model.forward_features(x)['x_norm_patchtokens'], \
            model.forward_features(x)['x_norm_patchtokens']


@pytest.mark.parametrize('arch', ['dinov3_vits16', 'dinov3_vit7b16'])
def test_fully_frozen_v3_is_deterministic_in_train_mode(arch):
    model = DinoVisionTransformer(arch, **TINY, frozen_stages=TINY['depth'])
    assert model.rope_embed.rescale_coords == 2.0  # the augmentation is on in the arch
    model.train()
    assert not model.rope_embed.training
    assert _training_leaves(model) == []
    torch.manual_seed(0)
    x = torch.randn(1, 3, 48, 64)
    a, b = _two_calls(model, x)
    assert torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x)['x_norm_patchtokens'], a)


def test_rope_is_frozen_with_the_position_embedding_stage():
    partly = DinoVisionTransformer('dinov3_vits16', **TINY, frozen_stages=0).train()
    assert not partly.rope_embed.training and not partly.patch_embed.training
    assert partly.blocks[0].training and partly.norm.training
    # Nothing frozen: fine-tuning keeps the official RoPE augmentation.
    free = DinoVisionTransformer('dinov3_vits16', **TINY).train()
    assert free.rope_embed.training
    torch.manual_seed(0)
    a, b = _two_calls(free, torch.randn(1, 3, 48, 64))
    assert not torch.equal(a, b)


def test_train_through_a_parent_and_back():
    model = DinoVisionTransformer('dinov3_vits16', **TINY, frozen_stages=TINY['depth'])
    parent = nn.Sequential(model, nn.Linear(32, 2))
    for _ in range(2):
        parent.train()
        assert _training_leaves(model) == [] and parent[1].training
        parent.eval()
        assert not any(m.training for m in parent.modules())


def test_dinov2_frozen_leaves_nothing_in_train_mode():
    model = DinoVisionTransformer('dinov2_vits14', **TINY, frozen_stages=TINY['depth'],
                                  drop_path_rate=0.5).train()
    assert model.rope_embed is None and _training_leaves(model) == []
    a, b = _two_calls(model, torch.randn(1, 3, 42, 56))
    assert torch.equal(a, b)  # no drop path either


@pytest.mark.parametrize('leaf', FROZEN_DET, ids=osp.basename)
def test_frozen_detection_leaf_backbone_stays_in_eval(leaf):
    from mmengine.config import Config

    from dino_mm.registry import MODELS
    from dino_mm.models.backbones.vision_transformer import DINO_VIT_ARCHS
    cfg = Config.fromfile(leaf).model.backbone
    assert cfg.frozen_stages >= DINO_VIT_ARCHS[cfg.arch]['depth']  # the whole ViT
    cfg.update(TINY, frozen_stages=TINY['depth'], out_indices=[0, 1, 2, 2], init_cfg=None)
    model = MODELS.build(cfg)
    model.train()
    assert _training_leaves(model) == [], _training_leaves(model)
    a, b = _two_calls(model, torch.randn(1, 3, 48, 64))
    assert torch.equal(a, b)


def test_frozen_detection_leaves_found():
    assert len(FROZEN_DET) >= 4
