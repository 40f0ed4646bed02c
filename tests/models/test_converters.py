"""Checkpoint converters: official <-> HF transformers <-> timm for every DINO family.

Each family is checked two ways: official -> HF -> official is bit-exact, and a state dict
born in HF (or timm) converts to one that loads strictly into dino_mm and reproduces the
HF (or timm) outputs on real images.
"""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import transformers as tf

from dino_mm.models.backbones.convnext import DinoConvNeXt
from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
from dino_mm.models.converters import (LayoutError, convert_state_dict, detect_layout,
                                       unchunk_blocks)

D, L, H = 64, 2, 4
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# name -> (dino_mm kwargs, HF model/config factory, timm model name, timm kwargs)
VIT_CASES = {
    'dinov2': dict(arch='dinov2_vits14', img_size=56),
    'dinov2_reg': dict(arch='dinov2_vits14_reg', img_size=56),
    'dinov2_swiglu': dict(arch='dinov2_vitg14', img_size=56),
    'dinov3': dict(arch='dinov3_vits16'),
    'dinov3_swiglu': dict(arch='dinov3_vits16plus'),
}


def _images(real_images, size):
    batch = []
    for name in ('coffee', 'rocket'):
        img = torch.from_numpy(np.ascontiguousarray(real_images[name])).permute(2, 0, 1)
        batch.append(F.interpolate(img[None].float() / 255, size=size, mode='bilinear',
                                   antialias=True))
    return (torch.cat(batch) - MEAN) / STD


def _perturb(sd, seed=0):
    """Move every float tensor away from its init so a mis-mapped tensor shows up; keep the
    DINOv3 k-bias at 0 (official files are trained with it masked) and buffers as built."""
    gen = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith(('bias_mask', 'periods')) or not v.is_floating_point():
            continue
        noise = torch.randn(v.shape, generator=gen) * (0.2 if v.ndim > 1 else 0.5)
        v.copy_(noise + (1.0 if k.endswith('weight') and v.ndim == 1 else 0.0))
    for k, v in sd.items():
        if k.endswith('qkv.bias') and k.replace('bias', 'bias_mask') in sd:
            v[v.shape[0] // 3: 2 * v.shape[0] // 3] = 0
    return sd


def _dino_vit(case):
    return DinoVisionTransformer(embed_dim=D, depth=L, num_heads=H, **VIT_CASES[case]).eval()


def _hf_vit(case, ffn_hidden):
    if case.startswith('dinov2'):
        reg = case == 'dinov2_reg'
        cfg_cls = tf.Dinov2WithRegistersConfig if reg else tf.Dinov2Config
        model_cls = tf.Dinov2WithRegistersModel if reg else tf.Dinov2Model
        cfg = cfg_cls(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, image_size=56,
                      patch_size=14, mlp_ratio=4, layer_norm_eps=1e-6,
                      use_swiglu_ffn=case == 'dinov2_swiglu')
        return model_cls(cfg).eval()
    gated = case == 'dinov3_swiglu'
    cfg = tf.DINOv3ViTConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                             intermediate_size=ffn_hidden, use_gated_mlp=gated,
                             hidden_act='silu' if gated else 'gelu', num_register_tokens=4,
                             layer_norm_eps=1e-5)
    return tf.DINOv3ViTModel(cfg).eval()


def _timm_vit(case, ffn_hidden):
    if case.startswith('dinov2'):
        name = {'dinov2': 'vit_small_patch14_dinov2', 'dinov2_reg': 'vit_small_patch14_reg4_dinov2',
                'dinov2_swiglu': 'vit_giant_patch14_dinov2'}[case]
        extra = dict(mlp_ratio=2 * ffn_hidden / D) if case == 'dinov2_swiglu' else {}
        return timm.create_model(name, img_size=56, embed_dim=D, depth=L, num_heads=H,
                                 num_classes=0, **extra).eval()
    name = ('vit_small_patch16_dinov3_qkvb' if case == 'dinov3'
            else 'vit_small_plus_patch16_dinov3_qkvb')
    extra = dict(mlp_ratio=ffn_hidden / D) if case == 'dinov3_swiglu' else {}
    return timm.create_model(name, embed_dim=D, depth=L, num_heads=H, num_classes=0,
                             dynamic_img_size=True, **extra).eval()


def _ffn_hidden(sd):
    for k, v in sd.items():
        if k.endswith(('mlp.fc1.weight', 'mlp.w1.weight')):
            return v.shape[0]
        if k.endswith('mlp.w12.weight'):
            return v.shape[0] // 2
    raise AssertionError('no FFN weight')


def _input_size(case):
    return (56, 56) if case.startswith('dinov2') else (64, 48)  # v3: non-square, RoPE


@pytest.mark.parametrize('case', list(VIT_CASES))
def test_vit_official_hf_round_trip_bit_exact(case):
    sd = _perturb(_dino_vit(case).state_dict())
    family, layout = detect_layout(sd)
    assert (family, layout) == (('dinov2_vit' if case.startswith('dinov2') else 'dinov3_vit'),
                                'official')
    hf_sd = convert_state_dict(sd, to='hf')
    assert detect_layout(hf_sd) == (family, 'hf')
    back = convert_state_dict(hf_sd, to='official', head_dim=D // H)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # official -> timm -> official restores every key (values: see the timm parity test)
    assert set(convert_state_dict(convert_state_dict(sd, to='timm'), to='official',
                                  head_dim=D // H)) == set(sd)


@pytest.mark.parametrize('case', list(VIT_CASES))
def test_vit_hf_and_timm_to_official_parity(case, real_images):
    x = _images(real_images, _input_size(case))
    ref_sd = _dino_vit(case).state_dict()
    hidden = _ffn_hidden(ref_sd)
    n_prefix = 1 + (4 if case == 'dinov2_reg' or case.startswith('dinov3') else 0)
    errors = {}
    for source in ('hf', 'timm'):
        other = _hf_vit(case, hidden) if source == 'hf' else _timm_vit(case, hidden)
        other_sd = other.state_dict()
        _perturb(other_sd, seed=3)
        if case.startswith('dinov3') and source == 'hf':
            # HF's qkv has no k-bias; its RoPE buffer is not persistent
            assert not any('k_proj.bias' in k for k in other_sd)
        other.load_state_dict(other_sd)
        official = convert_state_dict(other_sd, to='official', head_dim=D // H)
        ours = _dino_vit(case)
        ours.load_state_dict(official, strict=True)
        with torch.no_grad():
            mine = ours.forward_features(x)
            if source == 'hf':
                tokens = other(x).last_hidden_state
            else:
                tokens = other.forward_features(x)
        errors[source] = max(
            (mine['x_norm_clstoken'] - tokens[:, 0]).abs().max().item(),
            (mine['x_norm_patchtokens'] - tokens[:, n_prefix:]).abs().max().item())
    print(case, 'max abs err vs', errors)
    assert errors['hf'] <= 1e-4 and errors['timm'] <= 1e-4, errors


def test_dinov3_k_bias_dropped_and_restored(real_images):
    model = _dino_vit('dinov3')
    sd = _perturb(model.state_dict())
    sd['blocks.0.attn.qkv.bias'][D:2 * D] = 5.0  # masked by bias_mask: must not matter
    model.load_state_dict(sd)
    hf_sd = convert_state_dict(sd, to='hf')
    assert 'model.layer.0.attention.k_proj.bias' not in hf_sd
    assert 'rope_embed.periods' not in hf_sd and 'rope_embeddings.periods' not in hf_sd
    back = convert_state_dict(hf_sd, to='official', head_dim=D // H)
    assert torch.equal(back['blocks.0.attn.qkv.bias'][D:2 * D], torch.zeros(D))
    assert back['blocks.0.attn.qkv.bias_mask'].tolist() == [1.0] * D + [0.0] * D + [1.0] * D
    restored = _dino_vit('dinov3')
    restored.load_state_dict(back, strict=True)
    x = _images(real_images, (48, 64))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), atol=1e-6, rtol=1e-6)


def test_hf_legacy_names_and_chunked_blocks():
    sd = _perturb(_dino_vit('dinov2_swiglu').state_dict())
    hf_sd = convert_state_dict(sd, to='hf')
    # transformers 4.x names, as stored in the files on the HF hub
    legacy = {}
    for k, v in hf_sd.items():
        k = k.replace('attention.q_proj', 'attention.attention.query')
        k = k.replace('attention.k_proj', 'attention.attention.key')
        k = k.replace('attention.v_proj', 'attention.attention.value')
        k = k.replace('attention.o_proj', 'attention.output.dense')
        k = k.replace('mlp.down_proj', 'mlp.weights_out')
        legacy[k] = v
    for i in range(L):
        for kind in ('weight', 'bias'):
            gate = legacy.pop(f'encoder.layer.{i}.mlp.gate_proj.{kind}')
            up = legacy.pop(f'encoder.layer.{i}.mlp.up_proj.{kind}')
            legacy[f'encoder.layer.{i}.mlp.weights_in.{kind}'] = torch.cat([gate, up])
    back = convert_state_dict(legacy, to='official')
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # FSDP-chunked official keys blocks.{c}.{i} (depth 2, 2 chunks) -> flat, wrapped + DDP
    chunked = {(k.replace('blocks.1.', 'blocks.1.1.').replace('blocks.0.', 'blocks.0.0.')
                if k.startswith('blocks.') else k): v for k, v in sd.items()}
    assert 'blocks.1.1.norm1.weight' in chunked
    assert unchunk_blocks(chunked).keys() == sd.keys()
    wrapped = {'state_dict': {'module.' + k: v for k, v in chunked.items()}}
    flat = convert_state_dict(wrapped, to='official')
    assert flat.keys() == sd.keys()


def test_convnext_round_trips():
    sd = _perturb(DinoConvNeXt(depths=[1, 1, 2, 1], dims=[16, 32, 48, 64]).state_dict())
    sd['norms.3.weight'], sd['norms.3.bias'] = sd['norm.weight'], sd['norm.bias']
    for layout in ('hf', 'timm'):
        other = convert_state_dict(sd, to=layout)
        assert detect_layout(other) == ('dinov3_convnext', layout)
        back = convert_state_dict(other, to='official')
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd), layout
    # HF <-> timm directly (through the official layout)
    timm_sd = convert_state_dict(convert_state_dict(sd, to='hf'), to='timm')
    assert timm_sd.keys() == convert_state_dict(sd, to='timm').keys()


def test_bad_input_errors():
    with pytest.raises(LayoutError, match='unknown checkpoint layout'):
        convert_state_dict({'encoder.foo.weight': torch.zeros(1)}, to='hf')
    sd = _dino_vit('dinov2').state_dict()
    with pytest.raises(LayoutError, match="look like the 'official'"):
        convert_state_dict(sd, to='hf', src='timm')
    with pytest.raises(LayoutError, match='unknown target layout'):
        convert_state_dict(sd, to='onnx')
    with pytest.raises(LayoutError, match='expected a state dict'):
        convert_state_dict([1, 2], to='hf')


def _vit7b_like():
    """``dinov3_vit7b16``'s options (SwiGLU-64, no qkv bias, untied ``local_cls_norm``) at
    D=64, depth 2."""
    return DinoVisionTransformer(arch='dinov3_vit7b16', embed_dim=D, depth=L, num_heads=H).eval()


def test_vit7b_local_cls_norm_survives_hf_and_timm_round_trips(real_images):
    """HF and timm 7B files have no ``local_cls_norm`` (training-only); converting them back
    refills it as a copy of ``norm``: strict loading works and eval outputs are unchanged."""
    from dino_mm.models.backbones.utils import load_checkpoint_strict
    ref = _vit7b_like()
    sd = _perturb(ref.state_dict())
    ref.load_state_dict(sd)
    assert 'local_cls_norm.weight' in sd and 'blocks.0.attn.qkv.bias' not in sd
    assert not torch.equal(sd['local_cls_norm.weight'], sd['norm.weight'])
    x = _images(real_images, (64, 48))
    with torch.no_grad():
        want = ref.forward_features(x)
    hidden = _ffn_hidden(sd)
    for layout in ('hf', 'timm'):
        other_sd = convert_state_dict(sd, to=layout)
        assert not any('local_cls_norm' in k for k in other_sd), layout
        # The intermediate state dict is exactly a HF / timm ViT-7B one (at this size).
        if layout == 'hf':
            other = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(
                hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                intermediate_size=hidden, use_gated_mlp=True, hidden_act='silu',
                num_register_tokens=4, layer_norm_eps=1e-5, query_bias=False,
                value_bias=False))
        else:
            other = timm.create_model('vit_7b_patch16_dinov3', embed_dim=D, depth=L,
                                      num_heads=H, num_classes=0)
        other.load_state_dict(other_sd, strict=True)

        back = convert_state_dict(other_sd, to='official', head_dim=D // H, qkv_bias=False,
                                  local_cls_norm=True)
        assert set(back) == set(sd), layout
        for k in sd:
            if k.startswith('local_cls_norm.'):
                expect = sd['norm.' + k.split('.')[-1]]
            elif layout == 'timm' and k == 'mask_token':
                expect = torch.zeros_like(sd[k])  # timm has no mask token
            else:
                expect = sd[k]
            assert torch.equal(back[k], expect), (layout, k)
        # Loading strictly: the converted dict, and the HF / timm dict directly (the
        # backbone loader converts it, knowing the model has a local_cls_norm).
        converted, direct = _vit7b_like(), _vit7b_like()
        converted.load_state_dict(back, strict=True)
        load_checkpoint_strict(direct, other_sd)
        for model in (converted, direct):
            with torch.no_grad():
                got = model.forward_features(x)
            for key in ('x_norm_clstoken', 'x_storage_tokens', 'x_norm_patchtokens',
                        'x_prenorm'):
                torch.testing.assert_close(got[key], want[key], atol=0, rtol=0,
                                           msg=f'{layout} {key}')
            assert torch.equal(model.local_cls_norm.bias, model.norm.bias)


def test_local_cls_norm_default_and_errors():
    """The default adds ``local_cls_norm`` for the 7B width only; ``False`` never adds it;
    asking for it on a DINOv2 file is an error."""
    hf_7b = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(
        hidden_size=4096, num_hidden_layers=0, num_attention_heads=32, intermediate_size=64,
        num_register_tokens=4, query_bias=False, value_bias=False)).state_dict()
    timm_7b = timm.create_model('vit_7b_patch16_dinov3', depth=0, num_classes=0).state_dict()
    for other_sd in (hf_7b, timm_7b):
        out = convert_state_dict(other_sd, to='official')
        assert torch.equal(out['local_cls_norm.weight'], out['norm.weight'])
        assert torch.equal(out['local_cls_norm.bias'], out['norm.bias'])
        assert 'local_cls_norm.weight' not in convert_state_dict(other_sd, to='official',
                                                                  local_cls_norm=False)
    small = convert_state_dict(_vit7b_like().state_dict(), to='hf')
    assert 'local_cls_norm.weight' not in convert_state_dict(small, to='official')
    with pytest.raises(LayoutError, match='only exists in DINOv3 ViTs'):
        convert_state_dict(convert_state_dict(_dino_vit('dinov2').state_dict(), to='hf'),
                           to='official', local_cls_norm=True)
