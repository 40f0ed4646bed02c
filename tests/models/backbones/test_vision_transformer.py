"""Parity of DinoVisionTransformer with timm, HF transformers and the dinov2 package.

Every comparison loads the SAME random official-layout state dict (norm weights and
layer-scale gammas randomised too) into dino_mm and into the oracle, in fp32 on CPU.
"""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault('XFORMERS_DISABLED', '1')

from dino_mm.models.backbones import DinoVisionTransformer, load_checkpoint_strict  # noqa: E402

ATOL = 1e-4


def random_official_sd(model, std=0.02, seed=0):
    """Random values for every tensor of the official layout, keeping buffers exact."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith('bias_mask') or k.endswith('rope_embed.periods'):
            sd[k] = v.clone()
        elif k.endswith('gamma') or (('norm' in k) and k.endswith('weight')):
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        elif k in ('cls_token', 'pos_embed', 'register_tokens', 'storage_tokens', 'mask_token'):
            sd[k] = torch.randn(v.shape, generator=g)
        else:
            sd[k] = std * torch.randn(v.shape, generator=g)
    return sd


_IMAGES = {}


def image_batch(real_images, h, w, n=2):
    """Real photographs resized to h x w, ImageNet-normalised, (n, 3, h, w)."""
    if (h, w, n) not in _IMAGES:
        _IMAGES[h, w, n] = _image_batch(real_images, h, w, n)
    return _IMAGES[h, w, n].clone()


def _image_batch(real_images, h, w, n):
    from skimage.transform import resize
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    out = []
    for img in list(real_images.values())[:n]:
        im = resize(img[..., :3] / 255.0, (h, w), anti_aliasing=True)
        out.append(torch.from_numpy(((im - mean) / std).transpose(2, 0, 1)).float())
    return torch.stack(out)


def max_err(a, b):
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- DINOv2
V2_ARCHS = {  # arch -> (depth used in tests, timm name, oracle kwargs)
    'dinov2_vits14': (2, 'vit_small_patch14_dinov2', dict(embed_dim=384, num_heads=6)),
    'dinov2_vitb14': (1, 'vit_base_patch14_dinov2', dict(embed_dim=768, num_heads=12)),
    'dinov2_vitl14': (1, 'vit_large_patch14_dinov2', dict(embed_dim=1024, num_heads=16)),
    'dinov2_vitg14': (1, 'vit_giant_patch14_dinov2',
                      dict(embed_dim=1536, num_heads=24, ffn_layer='swiglufused')),
}


def _v2_models(arch, reg):
    depth, timm_name, okw = V2_ARCHS[arch]
    model = DinoVisionTransformer(arch + ('_reg' if reg else ''), depth=depth).eval()
    sd = random_official_sd(model)
    load_checkpoint_strict(model, sd)
    return model, sd, depth, timm_name, okw


def _hf_v2(sd, model, depth, reg):
    import transformers as T
    D, H = model.embed_dim, model.num_heads
    swiglu = model.arch_settings['ffn_layer'] != 'mlp'
    cfg_cls = T.Dinov2WithRegistersConfig if reg else T.Dinov2Config
    cfg = cfg_cls(hidden_size=D, num_hidden_layers=depth, num_attention_heads=H, mlp_ratio=4,
                  image_size=518, patch_size=14, layer_norm_eps=1e-6, use_swiglu_ffn=swiglu,
                  layerscale_value=1.0, **(dict(num_register_tokens=4) if reg else {}))
    hf = (T.Dinov2WithRegistersModel if reg else T.Dinov2Model)(cfg).eval()
    target = hf.state_dict()
    out = {'embeddings.cls_token': sd['cls_token'],
           'embeddings.mask_token': sd['mask_token'].reshape(target['embeddings.mask_token'].shape),
           'embeddings.position_embeddings': sd['pos_embed'],
           'embeddings.patch_embeddings.projection.weight': sd['patch_embed.proj.weight'],
           'embeddings.patch_embeddings.projection.bias': sd['patch_embed.proj.bias'],
           'layernorm.weight': sd['norm.weight'], 'layernorm.bias': sd['norm.bias']}
    if reg:
        out['embeddings.register_tokens'] = sd['register_tokens']
    for i in range(depth):
        b, e = f'blocks.{i}.', f'encoder.layer.{i}.'
        for t in ('weight', 'bias'):
            out[e + f'norm1.{t}'] = sd[b + f'norm1.{t}']
            out[e + f'norm2.{t}'] = sd[b + f'norm2.{t}']
            q, k, v = sd[b + f'attn.qkv.{t}'].chunk(3, 0)
            names = [n for n in ('q_proj', 'k_proj', 'v_proj', 'o_proj')
                     if e + f'attention.{n}.{t}' in target]
            if names:
                out.update({e + f'attention.q_proj.{t}': q, e + f'attention.k_proj.{t}': k,
                            e + f'attention.v_proj.{t}': v,
                            e + f'attention.o_proj.{t}': sd[b + f'attn.proj.{t}']})
            else:
                out.update({e + f'attention.attention.query.{t}': q,
                            e + f'attention.attention.key.{t}': k,
                            e + f'attention.attention.value.{t}': v,
                            e + f'attention.output.dense.{t}': sd[b + f'attn.proj.{t}']})
            if swiglu:
                gate, up = sd[b + f'mlp.w12.{t}'].chunk(2, 0)
                if e + f'mlp.gate_proj.{t}' in target:
                    out.update({e + f'mlp.gate_proj.{t}': gate, e + f'mlp.up_proj.{t}': up,
                                e + f'mlp.down_proj.{t}': sd[b + f'mlp.w3.{t}']})
                else:
                    out.update({e + f'mlp.weights_in.{t}': sd[b + f'mlp.w12.{t}'],
                                e + f'mlp.weights_out.{t}': sd[b + f'mlp.w3.{t}']})
            else:
                fc1, fc2 = (('fc1', 'fc2') if e + f'mlp.fc1.{t}' in target
                            else ('up_proj', 'down_proj'))
                out[e + f'mlp.{fc1}.{t}'] = sd[b + f'mlp.fc1.{t}']
                out[e + f'mlp.{fc2}.{t}'] = sd[b + f'mlp.fc2.{t}']
        out[e + 'layer_scale1.lambda1'] = sd[b + 'ls1.gamma']
        out[e + 'layer_scale2.lambda1'] = sd[b + 'ls2.gamma']
    hf.load_state_dict(out, strict=True)
    return hf


def _timm_v2(sd, depth, timm_name, reg):
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn
    name = timm_name.replace('_dinov2', '_reg4_dinov2') if reg else timm_name
    m = timm.create_model(name, pretrained=False, depth=depth, img_size=518,
                          dynamic_img_size=True).eval()
    m.load_state_dict(checkpoint_filter_fn(dict(sd), m), strict=True)
    return m


@pytest.mark.parametrize('reg', [False, True], ids=['noreg', 'reg4'])
@pytest.mark.parametrize('arch', list(V2_ARCHS))
def test_dinov2_parity(arch, reg, real_images):
    from dinov2.models.vision_transformer import DinoVisionTransformer as OfficialViT
    model, sd, depth, timm_name, okw = _v2_models(arch, reg)
    # HF (size= bicubic) and timm interpolate differently from the official
    # scale_factor path of non-register models (max abs diff ~2-6 on random pos-embeds),
    # so they are oracles only without interpolation (518) or for register models
    # (size= + antialias, exact).
    use_hf_timm = reg or arch == 'dinov2_vits14'
    hf = _hf_v2(sd, model, depth, reg) if use_hf_timm else None
    timm_model = _timm_v2(sd, depth, timm_name, reg) if use_hf_timm else None
    official = None
    if not reg:  # the packaged dinov2 release predates registers
        official = OfficialViT(patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
                               depth=depth, **okw).eval()
        official.load_state_dict(sd, strict=True)
    if arch == 'dinov2_vits14':
        sizes = [(224, 224), (280, 420), (518, 518)]  # 518: early return of pos-embed path
    else:
        sizes = [(154, 224)]  # non-square: exercises the interpolation path
    R = 4 if reg else 0
    for h, w in sizes:
        x = image_batch(real_images, h, w, n=2 if (h, w) == (224, 224) else 1)
        with torch.no_grad():
            ours = model.forward_features(x)
            inter = model.get_intermediate_layers(x, n=depth, return_class_token=True)
            if official is not None:
                ref = official.forward_features(x)
                for k in ('x_norm_clstoken', 'x_norm_patchtokens', 'x_prenorm'):
                    assert max_err(ours[k], ref[k]) <= ATOL, (arch, h, w, k)
                err = max(max_err(ours[k], ref[k])
                          for k in ('x_norm_clstoken', 'x_norm_patchtokens'))
                print(f'MEASURED {arch} reg={reg} {h}x{w} dinov2-pkg {err:.2e}')
                ref_inter = official.get_intermediate_layers(x, n=depth, return_class_token=True)
                for (p, c), (rp, rc) in zip(inter, ref_inter):
                    assert max_err(p, rp) <= ATOL and max_err(c, rc) <= ATOL
            if use_hf_timm and (reg or (h, w) == (518, 518)):
                hf_out = hf(pixel_values=x).last_hidden_state
                tm_out = timm_model.forward_features(x)
                full = torch.cat([ours['x_norm_clstoken'][:, None], ours['x_norm_regtokens'],
                                  ours['x_norm_patchtokens']], 1)
                print(f'MEASURED {arch} reg={reg} {h}x{w} hf {max_err(full, hf_out):.2e} '
                      f'timm {max_err(full, tm_out):.2e}')
                assert max_err(full, hf_out) <= ATOL, (arch, h, w, 'hf')
                assert max_err(full, tm_out) <= ATOL, (arch, h, w, 'timm')
            assert ours['x_norm_regtokens'].shape == (x.shape[0], R, model.embed_dim)
            assert inter[-1][0].shape == ours['x_norm_patchtokens'].shape
            assert max_err(inter[-1][0], ours['x_norm_patchtokens']) <= 1e-5


# ----------------------------------------------------------------------------- DINOv3
V3_ARCHS = {  # arch -> (overrides for a cheap model, timm name or None)
    'dinov3_vits16': (dict(depth=2), 'vit_small_patch16_dinov3_qkvb'),
    'dinov3_vits16plus': (dict(depth=2), 'vit_small_plus_patch16_dinov3_qkvb'),
    'dinov3_vitb16': (dict(depth=1), 'vit_base_patch16_dinov3_qkvb'),
    'dinov3_vitl16': (dict(depth=1), 'vit_large_patch16_dinov3_qkvb'),
    'dinov3_vitl16plus': (dict(depth=1), None),  # timm has no L+ model
    'dinov3_vith16plus': (dict(depth=1), 'vit_huge_plus_patch16_dinov3_qkvb'),
    # 7B quirks (head dim 128, swiglu64, no qkv bias, local_cls_norm) at a small width.
    'dinov3_vit7b16': (dict(depth=1, embed_dim=512, num_heads=4), 'vit_7b_patch16_dinov3'),
}


def _hf_v3(sd, model, depth):
    import transformers as T
    s = model.arch_settings
    blk = model.blocks[0]
    gated = s['ffn_layer'] != 'mlp'
    hidden = blk.mlp.hidden_features if gated else blk.mlp.fc1.out_features
    cfg = T.DINOv3ViTConfig(
        hidden_size=model.embed_dim, num_hidden_layers=depth, num_attention_heads=model.num_heads,
        intermediate_size=hidden, use_gated_mlp=gated, hidden_act='silu' if gated else 'gelu',
        num_register_tokens=4, patch_size=16,
        layer_norm_eps=1e-5, rope_theta=100.0, query_bias=s['qkv_bias'],
        value_bias=s['qkv_bias'], key_bias=False, layerscale_value=1e-5)
    hf = T.DINOv3ViTModel(cfg).eval()
    out = {'embeddings.cls_token': sd['cls_token'],
           'embeddings.mask_token': sd['mask_token'].reshape(1, 1, -1),
           'embeddings.register_tokens': sd['storage_tokens'],
           'embeddings.patch_embeddings.weight': sd['patch_embed.proj.weight'],
           'embeddings.patch_embeddings.bias': sd['patch_embed.proj.bias'],
           'norm.weight': sd['norm.weight'], 'norm.bias': sd['norm.bias']}
    for i in range(depth):
        b, e = f'blocks.{i}.', f'model.layer.{i}.'
        for t in ('weight', 'bias'):
            for n in ('norm1', 'norm2'):
                out[e + f'{n}.{t}'] = sd[b + f'{n}.{t}']
            if b + f'attn.qkv.{t}' in sd:
                q, k, v = sd[b + f'attn.qkv.{t}'].chunk(3, 0)
                out[e + f'attention.q_proj.{t}'] = q
                out[e + f'attention.v_proj.{t}'] = v
                if t == 'weight':
                    out[e + 'attention.k_proj.weight'] = k
            out[e + f'attention.o_proj.{t}'] = sd[b + f'attn.proj.{t}']
            if gated:
                out[e + f'mlp.gate_proj.{t}'] = sd[b + f'mlp.w1.{t}']
                out[e + f'mlp.up_proj.{t}'] = sd[b + f'mlp.w2.{t}']
                out[e + f'mlp.down_proj.{t}'] = sd[b + f'mlp.w3.{t}']
            else:
                out[e + f'mlp.up_proj.{t}'] = sd[b + f'mlp.fc1.{t}']
                out[e + f'mlp.down_proj.{t}'] = sd[b + f'mlp.fc2.{t}']
        out[e + 'layer_scale1.lambda1'] = sd[b + 'ls1.gamma']
        out[e + 'layer_scale2.lambda1'] = sd[b + 'ls2.gamma']
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and all('inv_freq' in k for k in missing), (missing, unexpected)
    return hf


def _timm_v3(sd, model, timm_name, overrides):
    import timm
    from timm.models.eva import checkpoint_filter_fn
    kw = {k: v for k, v in overrides.items() if k in ('depth', 'embed_dim', 'num_heads')}
    m = timm.create_model(timm_name, pretrained=False, **kw).eval()
    m.load_state_dict(checkpoint_filter_fn(dict(sd), m), strict=True)
    return m


@pytest.mark.parametrize('arch', list(V3_ARCHS))
def test_dinov3_parity(arch, real_images):
    overrides, timm_name = V3_ARCHS[arch]
    model = DinoVisionTransformer(arch, **overrides).eval()
    sd = random_official_sd(model)
    load_checkpoint_strict(model, sd)
    depth = model.n_blocks
    hf = _hf_v3(sd, model, depth)
    tm = _timm_v3(sd, model, timm_name, overrides) if timm_name else None
    sizes = [(224, 224), (160, 256)] if arch.startswith('dinov3_vits') else [(160, 256)]
    for h, w in sizes:
        x = image_batch(real_images, h, w, n=2 if 's16' in arch else 1)
        with torch.no_grad():
            ours = model.forward_features(x)
            full = torch.cat([ours['x_norm_clstoken'][:, None], ours['x_storage_tokens'],
                              ours['x_norm_patchtokens']], 1)
            assert full.shape[1] == 1 + 4 + (h // 16) * (w // 16)
            ref = hf(pixel_values=x).last_hidden_state
            print(f'MEASURED {arch} {h}x{w} hf {max_err(full, ref):.2e}')
            assert max_err(full, ref) <= ATOL, (arch, h, w, 'hf', max_err(full, ref))
            if tm is not None:
                ref_t = tm.forward_features(x)
                print(f'MEASURED {arch} {h}x{w} timm {max_err(full, ref_t):.2e}')
                assert max_err(full, ref_t) <= ATOL, (arch, h, w, 'timm', max_err(full, ref_t))
            if arch == 'dinov3_vits16':  # HF supports masks: mask_token replacement
                masks = torch.rand(x.shape[0], (h // 16) * (w // 16)) < 0.4
                mo = model.forward_features(x, masks=masks)
                mref = hf(pixel_values=x, bool_masked_pos=masks).last_hidden_state
                assert max_err(mo['x_norm_patchtokens'], mref[:, 5:]) <= ATOL
                assert max_err(mo['x_norm_patchtokens'], ours['x_norm_patchtokens']) > 1e-2
            inter = model.get_intermediate_layers(x, n=1, return_class_token=True,
                                                  return_extra_tokens=True)
            p, c, e = inter[0]
            assert max_err(p, ours['x_norm_patchtokens']) <= 1e-5
            assert max_err(c, ours['x_norm_clstoken']) <= 1e-5
            assert max_err(e, ours['x_storage_tokens']) <= 1e-5


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize('arch,published_m', [
    ('dinov2_vits14', 21), ('dinov2_vitb14', 86), ('dinov2_vitl14', 300),
    ('dinov2_vitg14', 1100), ('dinov3_vits16', 21), ('dinov3_vits16plus', 29),
    ('dinov3_vitb16', 86), ('dinov3_vitl16', 300), ('dinov3_vith16plus', 840),
    ('dinov3_vit7b16', 6716)])
def test_full_size_parameter_counts(arch, published_m):
    with torch.device('meta'):
        model = DinoVisionTransformer(arch)
    count_m = sum(p.numel() for p in model.parameters()) / 1e6
    # published figures are rounded (ViT-S/14: 21M for 22.06M; g: 1.1B for 1.136B)
    assert abs(count_m - published_m) / published_m < 0.06, count_m
    D = model.embed_dim
    assert model.state_dict()['blocks.0.attn.qkv.weight'].shape == (3 * D, D)


def test_official_key_layout():
    v2 = DinoVisionTransformer('dinov2_vitg14_reg', depth=1, embed_dim=48, num_heads=2)
    keys = set(v2.state_dict())
    assert {'cls_token', 'pos_embed', 'register_tokens', 'mask_token', 'norm.weight',
            'blocks.0.mlp.w12.weight', 'blocks.0.mlp.w3.bias', 'blocks.0.ls1.gamma'} <= keys
    assert v2.state_dict()['pos_embed'].shape == (1, 1370, 48)
    assert v2.state_dict()['mask_token'].shape == (1, 48)
    with torch.device('meta'):
        v3 = DinoVisionTransformer('dinov3_vit7b16', depth=1)
    keys3 = set(v3.state_dict())
    assert {'storage_tokens', 'rope_embed.periods', 'local_cls_norm.weight',
            'blocks.0.mlp.w1.weight', 'blocks.0.mlp.w2.weight'} <= keys3
    assert 'blocks.0.attn.qkv.bias' not in keys3 and 'pos_embed' not in keys3
    assert v3.state_dict()['rope_embed.periods'].shape == (32, )
    assert v3.blocks[0].mlp.w1.out_features == 8192  # 12288 * 2/3, aligned to 64
    odd = DinoVisionTransformer('dinov3_vit7b16', depth=1, embed_dim=200, num_heads=2)
    assert odd.blocks[0].mlp.w1.out_features == 448  # int(600 * 2/3)=400 -> up to 448
    l3 = DinoVisionTransformer('dinov3_vitl16', depth=1, embed_dim=64, num_heads=1)
    assert 'blocks.0.attn.qkv.bias_mask' in l3.state_dict()
    assert l3.blocks[0].norm1.eps == 1e-5 and v2.blocks[0].norm1.eps == 1e-6


# ----------------------------------------------------------------------------- behaviour
def _tiny(arch='dinov2_vits14', **kw):
    kw.setdefault('depth', 2)
    kw.setdefault('embed_dim', 32)
    kw.setdefault('num_heads', 2)
    if arch.startswith('dinov2'):
        kw.setdefault('img_size', 70)
    model = DinoVisionTransformer(arch, **kw)
    load_checkpoint_strict(model, random_official_sd(model))
    return model.eval()


def test_masks_match_official_package():
    from dinov2.models.vision_transformer import DinoVisionTransformer as OfficialViT
    model = _tiny(img_size=56)
    official = OfficialViT(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                           init_values=1.0, block_chunks=0).eval()
    official.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 3, 56, 84)
    masks = torch.rand(3, 4 * 6) < 0.4
    with torch.no_grad():
        ours, ref = model.forward_features(x, masks), official.forward_features(x, masks)
        unmasked = model.forward_features(x)
    for k in ('x_norm_clstoken', 'x_norm_patchtokens', 'x_prenorm'):
        assert max_err(ours[k], ref[k]) <= 1e-5
    assert ours['masks'] is masks
    assert max_err(ours['x_prenorm'], unmasked['x_prenorm']) > 1e-3


@pytest.mark.parametrize('arch', ['dinov2_vits14_reg', 'dinov3_vits16'])
def test_list_input_equals_per_tensor_calls(arch):
    model = _tiny(arch)
    p = model.patch_size
    xs = [torch.randn(2, 3, 4 * p, 4 * p), torch.randn(3, 3, 2 * p, 3 * p)]
    with torch.no_grad():
        outs = model.forward_features(xs)
        for xi, oi in zip(xs, outs):
            ref = model.forward_features(xi)
            assert set(oi) == set(ref)
            for k, v in ref.items():
                if v is not None:
                    assert torch.equal(oi[k], v), k


def test_v3_untied_norms_and_local_cls_norm():
    model = _tiny('dinov3_vits16', untie_cls_and_patch_norms=True,
                  untie_global_and_local_cls_norm=True)
    xs = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    with torch.no_grad():
        outs = model.forward_features(xs)
        prenorm = outs[1]['x_prenorm']
        assert torch.allclose(outs[1]['x_norm_clstoken'], model.cls_norm(prenorm[:, :5])[:, 0])
        assert torch.allclose(outs[1]['x_norm_patchtokens'], model.norm(prenorm[:, 5:]))
        model.train()
        model.rope_embed.rescale_coords = None  # keep train mode deterministic
        outs_t = model.forward_features(xs)
        assert torch.allclose(outs_t[1]['x_norm_clstoken'],
                              model.local_cls_norm(outs_t[1]['x_prenorm'][:, :5])[:, 0])
        assert torch.allclose(outs_t[0]['x_norm_clstoken'],
                              model.cls_norm(outs_t[0]['x_prenorm'][:, :5])[:, 0])


def test_forward_out_types_and_indices():
    model = _tiny('dinov2_vits14_reg', depth=3)
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        cls = model(x)
        assert torch.equal(cls, model.forward_features(x)['x_norm_clstoken'])
        ref = model.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True)
        model.out_indices, model.out_type = [0, -1], 'cls_featmap'
        outs = model(x)
        assert len(outs) == 2 and outs[0][0].shape == (2, 32, 3, 4)
        for (fm, c), (rfm, rc) in zip(outs, ref):
            assert torch.equal(fm, rfm) and torch.equal(c, rc)
        model.out_type = 'featmap'
        assert torch.equal(model(x)[1], ref[1][0])
        model.norm_out = False
        raw = model.get_intermediate_layers(x, n=1, reshape=True, norm=False)
        assert torch.equal(model(x)[1], raw[0])
    with pytest.raises(IndexError, match='out of range'):
        DinoVisionTransformer('dinov2_vits14', depth=2, out_indices=[5])


def test_build_from_registry():
    from dino_mm.registry import MODELS
    built = MODELS.build(dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16',
                              depth=1, out_indices=[-1], out_type='featmap'))
    assert built(torch.randn(1, 3, 48, 64))[0].shape == (1, 384, 3, 4)


def test_get_intermediate_layers_semantics():
    model = _tiny('dinov3_vits16', depth=3)
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        last2 = model.get_intermediate_layers(x, n=2)
        picked = model.get_intermediate_layers(x, n=[1, 2])
        assert all(torch.equal(a, b) for a, b in zip(last2, picked))
        maps = model.get_intermediate_layers(x, n=1, reshape=True)
        assert maps[0].shape == (2, 32, 3, 5) and maps[0].is_contiguous()
        both = model.get_intermediate_layers(x, n=1, return_class_token=True,
                                             return_extra_tokens=True)
        assert both[0][2].shape == (2, 4, 32)


def test_frozen_stages():
    model = _tiny('dinov2_vits14', depth=3, frozen_stages=2)
    model.train()
    assert not model.patch_embed.proj.weight.requires_grad
    assert not model.cls_token.requires_grad and not model.pos_embed.requires_grad
    assert not any(p.requires_grad for b in model.blocks[:2] for p in b.parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters())
    assert not model.blocks[1].training and model.blocks[2].training
    assert model.norm.weight.requires_grad
    full = _tiny('dinov3_vits16', depth=2, frozen_stages=2)
    assert not any(p.requires_grad for p in full.parameters())


@pytest.mark.parametrize('arch', ['dinov2_vits14', 'dinov3_vits16'])
def test_grad_checkpointing_same_outputs_and_grads(arch):
    model = _tiny(arch)
    model.train()
    if model.rope_embed is not None:
        model.rope_embed.rescale_coords = None
    x = torch.randn(2, 3, 2 * model.patch_size, 3 * model.patch_size)
    grads = []
    for cp in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(cp)
        out = model.forward_features(x)['x_norm_patchtokens']
        out.pow(2).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()
                                     if p.grad is not None]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][1], grads[1][1]))


def test_block_chunks_layout_and_outputs():
    flat = _tiny('dinov2_vits14', depth=4)
    chunked = DinoVisionTransformer('dinov2_vits14', depth=4, embed_dim=32, num_heads=2,
                                    img_size=70, block_chunks=2).eval()
    assert 'blocks.1.3.norm1.weight' in chunked.state_dict()
    assert 'blocks.1.1.norm1.weight' not in chunked.state_dict()
    load_checkpoint_strict(chunked, flat.state_dict())  # flat -> chunked
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        assert torch.equal(flat(x), chunked(x))
        assert all(torch.equal(a, b) for a, b in zip(
            flat.get_intermediate_layers(x, n=[1, 3]), chunked.get_intermediate_layers(x, [1, 3])))
    load_checkpoint_strict(flat, {'model': chunked.state_dict()})  # chunked -> flat


def test_bad_inputs_give_clear_errors():
    v2, v3 = _tiny('dinov2_vits14'), _tiny('dinov3_vits16')
    with pytest.raises(ValueError, match=r'30x28 is not a multiple of the patch size 14'):
        v2(torch.randn(1, 3, 30, 28))
    with pytest.raises(ValueError, match='Expected 3 input channels, got 1'):
        v2(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match='smaller than one 16x16 patch'):
        v3(torch.randn(1, 3, 8, 32))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        v3(torch.randn(3, 32, 32))
    # DINOv3 follows the official conv: the remainder is cropped
    x40 = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(v3(x40), v3(x40[..., :32, :32]), atol=1e-6)
    with pytest.raises(KeyError, match='Unknown arch'):
        DinoVisionTransformer('dinov2_vitx14')
    with pytest.raises(ValueError, match='masks must have shape'):
        v2.forward_features(torch.randn(1, 3, 28, 28), masks=torch.zeros(1, 3, dtype=torch.bool))


def test_checkpoint_errors_name_keys_and_shapes(tmp_path):
    model = _tiny('dinov2_vits14')
    sd = dict(model.state_dict())
    sd.pop('norm.bias')
    sd['extra.weight'] = torch.zeros(2)
    sd['blocks.0.attn.qkv.weight'] = torch.zeros(3, 3)
    path = tmp_path / 'bad.pth'
    torch.save({'state_dict': sd}, path)
    with pytest.raises(RuntimeError) as err:
        load_checkpoint_strict(model, str(path))
    msg = str(err.value)
    assert 'bad.pth' in msg and 'norm.bias (32,)' in msg and 'extra.weight (2,)' in msg
    assert 'blocks.0.attn.qkv.weight: checkpoint (3, 3) vs model (96, 32)' in msg
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint_strict(model, str(tmp_path / 'missing.pth'))


def test_init_cfg_pretrained_with_prefix(tmp_path):
    src = _tiny('dinov3_vits16')
    path = tmp_path / 'teacher.pth'
    torch.save({'teacher': {**{'backbone.' + k: v for k, v in src.state_dict().items()},
                            'dino_head.mlp.0.weight': torch.zeros(4, 4)}}, path)
    cfg = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    model = DinoVisionTransformer('dinov3_vits16', depth=2, embed_dim=32, num_heads=2,
                                  init_cfg=cfg)
    model.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_official_init_statistics():
    model = DinoVisionTransformer('dinov3_vits16', depth=1)
    mask = model.blocks[0].attn.qkv.bias_mask
    assert mask[:384].eq(1).all() and mask[384:768].eq(0).all() and mask[768:].eq(1).all()
    assert model.mask_token.abs().sum() == 0
    assert abs(model.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002
    assert torch.allclose(model.blocks[0].ls1.gamma, torch.full((384, ), 1e-5))
    v2 = DinoVisionTransformer('dinov2_vits14', depth=1)
    assert v2.cls_token.abs().max() < 1e-4 and v2.pos_embed.std() > 0.015


@pytest.mark.parametrize('arch', ['dinov2_vits14_reg', 'dinov3_vits16'])
def test_bf16_autocast(arch):
    model = _tiny(arch)
    x = torch.randn(1, 3, 3 * model.patch_size, 2 * model.patch_size)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
            prenorm = model.forward_features(x)['x_prenorm']
    # linears run in bf16 (so results move), the residual stream stays fp32 as upstream
    assert prenorm.dtype == torch.float32 and out.float().isfinite().all()
    err = (out.float() - ref).abs().max()
    assert 0 < err < 0.15
    if model.rope_embed is not None:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            sin, _ = model.rope_embed(H=3, W=2)
        assert sin.dtype == torch.float32


def test_drop_path_training():
    model = _tiny('dinov2_vits14', depth=4, drop_path_rate=0.4)
    assert [round(b.drop_path_rate, 4) for b in model.blocks] == [0.0, 0.1333, 0.2667, 0.4]
    v3 = _tiny('dinov3_vits16', depth=2, drop_path_rate=0.2)
    assert [b.drop_path_rate for b in v3.blocks] == [0.2, 0.2]
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        model.train()
        c = model(x)
    assert not torch.allclose(a, c)
