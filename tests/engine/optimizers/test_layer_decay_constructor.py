"""LayerDecayOptimWrapperConstructor vs the official dinov2 param groups (oracle)."""
import pytest
import torch
from torch import nn

from dino_mm.engine.optimizers import LayerDecayOptimWrapperConstructor, get_layer_id
from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
from dino_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS

from tests.oracles import require

vit_mod = require('dinov2.models.vision_transformer')
param_groups = require('dinov2.utils.param_groups')
dino_head_mod = require('dinov2.layers.dino_head')

DECAY, PE_MULT, LR, WD = 0.9, 0.2, 0.01, 0.04


def _vit(block_chunks):
    return vit_mod.DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=4,
                                         num_heads=2, init_values=1e-5,
                                         block_chunks=block_chunks)


class _SSL(nn.Module):
    """Parameter layout of the DINOv2 meta-architecture (student / frozen teacher)."""

    def __init__(self, block_chunks, registers=False):
        super().__init__()
        self.student = self._make(block_chunks, registers)
        self.teacher = self._make(block_chunks, registers).requires_grad_(False)

    @staticmethod
    def _make(block_chunks, registers):
        heads = dict(dino_head=dino_head_mod.DINOHead(32, 64, bottleneck_dim=16, hidden_dim=32),
                     ibot_head=dino_head_mod.DINOHead(32, 48, bottleneck_dim=16, hidden_dim=32))
        backbone = _vit(block_chunks)
        if registers:
            # The pinned oracle ViT predates registers; give it the parameter the newer
            # official ViT has (same name and shape) so both rules see it.
            backbone.register_tokens = nn.Parameter(torch.zeros(1, 4, 32))
        return nn.ModuleDict(dict(backbone=backbone, **heads))


def _oracle_mults(submodules):
    """name -> (lr_mult, wd_mult, is_last_layer), official per-submodule grouping."""
    out = {}
    for prefix, module in submodules:
        for d in param_groups.get_params_groups_with_decay(module, DECAY, PE_MULT):
            out[id(d['params'])] = (d['lr_multiplier'], d['wd_multiplier'], d['is_last_layer'])
    return out


def _ours(model, **paramwise):
    ctor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(type='dino_mm.LayerDecayOptimWrapperConstructor',
             optim_wrapper_cfg=dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
             paramwise_cfg=dict(layer_decay_rate=DECAY, patch_embed_lr_mult=PE_MULT,
                                **paramwise)))
    return ctor, ctor(model)


@pytest.mark.parametrize('block_chunks', [0, 2])
def test_ssl_model_groups_match_official(block_chunks):
    model = _SSL(block_chunks)
    ctor, wrapper = _ours(model)
    ref = _oracle_mults([(k, v) for k, v in model.student.items()])
    ours = {id(info['param']): (info['lr_mult'], info['wd_mult'], info['is_last_layer'])
            for info in ctor.param_multipliers(model).values()}
    assert set(ours) == set(ref)  # teacher (frozen) excluded, every student param present
    for key, (lr_mult, wd_mult, is_last) in ref.items():
        assert ours[key][0] == pytest.approx(lr_mult, rel=1e-12)
        assert ours[key][1:] == (wd_mult, is_last)
    # Fused groups: unique (lr_mult, wd_mult, is_last_layer), carrying the keys and
    # the initial lr / wd, covering every student param exactly once.
    groups = wrapper.optimizer.param_groups
    triples = [(g['lr_mult'], g['wd_mult'], g['is_last_layer']) for g in groups]
    assert len(set(triples)) == len(triples)
    n_ref_groups = len(list(param_groups.fuse_params_groups(
        [dict(params=p, lr_multiplier=m[0], wd_multiplier=m[1], is_last_layer=m[2])
         for p, m in zip(ref, ref.values())])))
    assert len(groups) == n_ref_groups
    for g in groups:
        assert g['lr'] == pytest.approx(LR * g['lr_mult'])
        assert g['weight_decay'] == pytest.approx(WD * g['wd_mult'])
        for p in g['params']:
            assert ref[id(p)][2] == g['is_last_layer']
    assert sum(len(g['params']) for g in groups) == len(ref)


def test_hand_checked_multipliers():
    model = _SSL(0)
    ctor, _ = _ours(model)
    m = ctor.param_multipliers(model)
    L = 4
    assert m['student.backbone.patch_embed.proj.weight']['lr_mult'] == pytest.approx(
        PE_MULT * DECAY**(L + 1))
    assert m['student.backbone.blocks.2.attn.qkv.weight']['lr_mult'] == pytest.approx(
        DECAY**(L - 2))
    assert m['student.backbone.norm.weight']['lr_mult'] == 1.0
    assert m['student.backbone.norm.weight']['wd_mult'] == 0.0
    assert m['student.backbone.blocks.0.ls1.gamma']['wd_mult'] == 0.0
    assert m['student.backbone.pos_embed']['wd_mult'] == 1.0  # tokens keep wd in v2
    assert m['student.dino_head.mlp.0.bias']['wd_mult'] == 0.0
    assert m['student.dino_head.last_layer.weight_g']['is_last_layer']
    assert m['student.dino_head.last_layer.weight_g']['wd_mult'] == 1.0
    assert not any(k.startswith('teacher.') for k in m)
    # Chunked names use the inner (global) index.
    assert get_layer_id('blocks.1.3.mlp.fc1.weight', 4) == 4
    assert get_layer_id('blocks.3.mlp.fc1.weight', 4) == 4
    # Current official rules: register_tokens (DINOv2) / storage_tokens (DINOv3) are layer 0;
    # each repository knows only its own name.
    assert get_layer_id('register_tokens', 4) == 0
    assert get_layer_id('storage_tokens', 4, 'dinov3') == 0
    assert get_layer_id('storage_tokens', 4) == 5
    assert get_layer_id('register_tokens', 4, 'dinov3') == 5


# Fact, from the current facebookresearch/dinov2 `dinov2/utils/param_groups.py`
# (`get_vit_lr_decay_rate`): the names that give layer id 0 are pos_embed, patch_embed,
# mask_token, cls_token and register_tokens, so registers get lr multiplier decay ** (L + 1)
# like the class token, and keep weight decay (only `.bias`, `norm`, `gamma` lose it). The
# pinned dinov2 0.0.1.dev2 oracle is older than registers: it has no register_tokens entry
# and gives them layer L + 1 (multiplier 1), so for that one parameter the oracle is not
# the reference.
@pytest.mark.parametrize('block_chunks', [0, 2])
def test_register_tokens_follow_current_official_rule(block_chunks):
    model = _SSL(block_chunks, registers=True)
    ctor, wrapper = _ours(model)
    m = ctor.param_multipliers(model)
    ref = _oracle_mults([(k, v) for k, v in model.student.items()])
    reg = model.student.backbone.register_tokens
    for info in m.values():  # oracle parity for every parameter the oracle knows
        if info['param'] is reg:
            continue
        lr_mult, wd_mult, is_last = ref[id(info['param'])]
        assert info['lr_mult'] == pytest.approx(lr_mult, rel=1e-12)
        assert (info['wd_mult'], info['is_last_layer']) == (wd_mult, is_last)
    L = 4
    got = m['student.backbone.register_tokens']
    assert got['lr_mult'] == pytest.approx(DECAY**(L + 1), rel=1e-12)
    assert (got['wd_mult'], got['is_last_layer']) == (1.0, False)
    assert got['lr_mult'] == m['student.backbone.cls_token']['lr_mult']
    # ... and it lands in the cls_token's optimizer group.
    group = next(g for g in wrapper.optimizer.param_groups
                 if any(p is reg for p in g['params']))
    assert any(p is model.student.backbone.cls_token for p in group['params'])
    assert group['lr'] == pytest.approx(LR * DECAY**(L + 1))


def test_dino_mm_reg_backbone_registers_at_layer_0():
    vit = DinoVisionTransformer(arch='dinov2_vits14_reg', img_size=28, embed_dim=32, depth=3,
                                num_heads=2)
    ctor, _ = _ours(vit)
    m = ctor.param_multipliers(vit)
    assert m['register_tokens']['lr_mult'] == pytest.approx(DECAY**4, rel=1e-12)
    assert m['register_tokens']['wd_mult'] == 1.0


# Fact, from the current facebookresearch/dinov3 `dinov3/train/param_groups.py`: layer id 0
# for names containing pos_embed, patch_embed, mask_token, cls_token or storage_tokens;
# block i -> i + 1 (`blocks.{i}`); everything else, i.e. the final `norm`, `cls_norm` and
# `local_cls_norm`, keeps layer L + 1 (multiplier 1). No weight decay when the name ends
# with "bias" or contains "norm", "gamma" or "fourier_w". The RoPE periods are a buffer.
def test_dinov3_backbone_tokens_and_untied_norms():
    vit = DinoVisionTransformer(arch='dinov3_vit7b16', embed_dim=32, depth=3, num_heads=2,
                                untie_cls_and_patch_norms=True)
    assert vit.local_cls_norm is not None and vit.cls_norm is not None
    model = nn.Module()
    model.student = nn.ModuleDict(dict(backbone=vit))
    ctor, _ = _ours(model, variant='dinov3')
    m = ctor.param_multipliers(model)
    L = 3
    for name in ('storage_tokens', 'cls_token', 'mask_token'):
        got = m['student.backbone.' + name]
        assert got['lr_mult'] == pytest.approx(DECAY**(L + 1), rel=1e-12), name
        assert got['wd_mult'] == 1.0, name
    assert m['student.backbone.patch_embed.proj.weight']['lr_mult'] == pytest.approx(
        PE_MULT * DECAY**(L + 1), rel=1e-12)
    assert m['student.backbone.blocks.1.attn.qkv.weight']['lr_mult'] == pytest.approx(
        DECAY**(L - 1), rel=1e-12)
    for name in ('norm', 'cls_norm', 'local_cls_norm'):
        for kind in ('weight', 'bias'):
            got = m[f'student.backbone.{name}.{kind}']
            assert (got['lr_mult'], got['wd_mult']) == (1.0, 0.0), (name, kind)
    assert not any('rope_embed' in k for k in m)  # periods: buffer, not optimised
    assert 'rope_embed.periods' in dict(vit.named_buffers())


def test_plain_backbone_matches_official():
    vit = _vit(0)
    ctor, _ = _ours(vit)
    ref = _oracle_mults([('', vit)])
    for info in ctor.param_multipliers(vit).values():
        lr_mult, wd_mult, is_last = ref[id(info['param'])]
        assert info['lr_mult'] == pytest.approx(lr_mult, rel=1e-12)
        assert (info['wd_mult'], info['is_last_layer']) == (wd_mult, is_last)


def test_dinov3_rules():
    model = nn.Module()
    model.student = nn.ModuleDict(dict(backbone=nn.Module(), dino_head=nn.Module()))
    bb = model.student.backbone
    bb.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    bb.storage_tokens = nn.Parameter(torch.zeros(1, 4, 2))
    bb.rope_fourier_w = nn.Parameter(torch.zeros(2))
    model.student.dino_head.mlp = nn.Linear(2, 2)
    ctor, _ = _ours(model, variant='dinov3', dino_head_wd_multiplier=0.5)
    m = ctor.param_multipliers(model)
    assert m['student.backbone.storage_tokens']['lr_mult'] == pytest.approx(DECAY**3)
    assert m['student.backbone.rope_fourier_w']['wd_mult'] == 0.0
    assert m['student.dino_head.mlp.weight']['wd_mult'] == 0.5
    assert m['student.dino_head.mlp.bias']['wd_mult'] == 0.0


def test_bad_config():
    with pytest.raises(KeyError, match='layer_decay'):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='AdamW', lr=1.)),
                                          dict(layer_decay=0.9))
    with pytest.raises(ValueError, match='variant'):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='AdamW', lr=1.)),
                                          dict(variant='dinov1'))
