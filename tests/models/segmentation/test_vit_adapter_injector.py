"""The original ViT-Adapter (with injectors) of the official DINOv2 ViT-g Mask2Former
segmentor: official key layout, and the official computation re-derived by hand.

The manifest below records, as facts, the keys and shapes of the official
``ViTAdapter(TIMMVisionTransformer)`` (``dinov2/eval/segmentation_m2f/models/backbones/
vit_adapter.py``, ``adapter_modules.py``, ``vit.py``, ``ops/modules/ms_deform_attn.py``): the
ViT's keys sit at the adapter's top level, blocks carry ``gamma1`` / ``gamma2`` layer scale
and an unfused SwiGLU ``mlp.w1 / w2 / w3`` (hidden ``int(2 * 4D / 3)`` rounded up to 8),
interactions hold ``injector`` (3-level deformable attention + ``gamma``), ``extractor``
(1 level + ConvFFN) and, on the last one, ``extra_extractors.{0,1}``.

``_official_forward`` is written from the official formulas, independently of dino_mm's
modules (no mmcv attention, no dino_mm blocks): MSDeformAttn with its bilinear
``grid_sample`` core, the TIMM-style block, the ``N // 21`` split of the DWConv, the
bicubic position-embedding resize, ``deform_inputs`` and the output stage. It reads the
*official* state dict; dino_mm reads the converted one.
"""
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('mmseg')

from dino_mm.models.segmentation import ViTAdapter  # noqa: E402
from dino_mm.models.segmentation.official_m2f import convert_dinov2_m2f_backbone  # noqa: E402

# A reduced ViT-g: the same block type (SwiGLU, layer scale, no registers), narrow and short.
D, DEPTH, HEADS, PATCH, GRID = 96, 4, 4, 14, 6
RANGES = [[0, 0], [1, 1], [2, 2], [3, 3]]
INPLANE, DEFORM_HEADS, POINTS, DEFORM_RATIO, CFFN_RATIO = 16, 4, 4, 0.5, 0.25
SWIGLU = (int(2 * 4 * D / 3) + 7) // 8 * 8


def _bn(prefix, c):
    return {f'{prefix}.weight': (c,), f'{prefix}.bias': (c,), f'{prefix}.running_mean': (c,),
            f'{prefix}.running_var': (c,), f'{prefix}.num_batches_tracked': ()}


def _msda(prefix, levels):
    v = int(D * DEFORM_RATIO)
    return {f'{prefix}.sampling_offsets.weight': (DEFORM_HEADS * levels * POINTS * 2, D),
            f'{prefix}.sampling_offsets.bias': (DEFORM_HEADS * levels * POINTS * 2,),
            f'{prefix}.attention_weights.weight': (DEFORM_HEADS * levels * POINTS, D),
            f'{prefix}.attention_weights.bias': (DEFORM_HEADS * levels * POINTS,),
            f'{prefix}.value_proj.weight': (v, D), f'{prefix}.value_proj.bias': (v,),
            f'{prefix}.output_proj.weight': (D, v), f'{prefix}.output_proj.bias': (D,)}


def _ln(prefix):
    return {f'{prefix}.weight': (D,), f'{prefix}.bias': (D,)}


def _extractor(prefix):
    h = int(D * CFFN_RATIO)
    return {**_ln(f'{prefix}.query_norm'), **_ln(f'{prefix}.feat_norm'),
            **_msda(f'{prefix}.attn', 1),
            f'{prefix}.ffn.fc1.weight': (h, D), f'{prefix}.ffn.fc1.bias': (h,),
            f'{prefix}.ffn.dwconv.dwconv.weight': (h, 1, 3, 3),
            f'{prefix}.ffn.dwconv.dwconv.bias': (h,),
            f'{prefix}.ffn.fc2.weight': (D, h), f'{prefix}.ffn.fc2.bias': (D,),
            **_ln(f'{prefix}.ffn_norm')}


def official_backbone_manifest() -> dict:
    """Official key -> shape of the DINOv2 segmentor's ``backbone`` (mmseg 0.x file)."""
    m = {'backbone.cls_token': (1, 1, D), 'backbone.pos_embed': (1, 1 + GRID * GRID, D),
         'backbone.patch_embed.proj.weight': (D, 3, PATCH, PATCH),
         'backbone.patch_embed.proj.bias': (D,)}
    for i in range(DEPTH):
        b = f'backbone.blocks.{i}'
        m.update({**_ln(f'{b}.norm1'), **_ln(f'{b}.norm2'),
                  f'{b}.attn.qkv.weight': (3 * D, D), f'{b}.attn.qkv.bias': (3 * D,),
                  f'{b}.attn.proj.weight': (D, D), f'{b}.attn.proj.bias': (D,),
                  f'{b}.mlp.w1.weight': (SWIGLU, D), f'{b}.mlp.w1.bias': (SWIGLU,),
                  f'{b}.mlp.w2.weight': (SWIGLU, D), f'{b}.mlp.w2.bias': (SWIGLU,),
                  f'{b}.mlp.w3.weight': (D, SWIGLU), f'{b}.mlp.w3.bias': (D,),
                  f'{b}.gamma1': (D,), f'{b}.gamma2': (D,)})
    m['backbone.level_embed'] = (3, D)
    P = INPLANE
    convs = {'stem.0': (P, 3), 'stem.3': (P, P), 'stem.6': (P, P), 'conv2.0': (2 * P, P),
             'conv3.0': (4 * P, 2 * P), 'conv4.0': (4 * P, 4 * P)}
    for name, (cout, cin) in convs.items():
        m[f'backbone.spm.{name}.weight'] = (cout, cin, 3, 3)
        bn = name[:-1] + str(int(name[-1]) + 1)
        m.update(_bn(f'backbone.spm.{bn}', cout))
    for i, cin in enumerate((P, 2 * P, 4 * P, 4 * P), start=1):
        m[f'backbone.spm.fc{i}.weight'] = (D, cin, 1, 1)
        m[f'backbone.spm.fc{i}.bias'] = (D,)
    for i in range(len(RANGES)):
        inj = f'backbone.interactions.{i}.injector'
        m.update({f'{inj}.gamma': (D,), **_ln(f'{inj}.query_norm'), **_ln(f'{inj}.feat_norm'),
                  **_msda(f'{inj}.attn', 3)})
        m.update(_extractor(f'backbone.interactions.{i}.extractor'))
    for j in range(2):
        m.update(_extractor(f'backbone.interactions.{len(RANGES) - 1}.extra_extractors.{j}'))
    m['backbone.up.weight'] = (D, D, 2, 2)
    m['backbone.up.bias'] = (D,)
    for i in range(1, 5):
        m.update(_bn(f'backbone.norm{i}', D))
    return m


def _random_official_state(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in official_backbone_manifest().items():
        if k.endswith('num_batches_tracked'):
            state[k] = torch.tensor(7)
        elif k.endswith('running_var'):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(('.weight', 'gamma', 'gamma1', 'gamma2')) and len(shape) == 1:
            state[k] = 1 + 0.2 * torch.randn(shape, generator=g)  # norms, gates
        else:
            state[k] = 0.2 * torch.randn(shape, generator=g)
    return state


def _adapter(**kw) -> ViTAdapter:
    kw.setdefault('norm_cfg', dict(type='SyncBN', requires_grad=True))
    return ViTAdapter(
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vitg14',
                      embed_dim=D, depth=DEPTH, num_heads=HEADS, img_size=GRID * PATCH),
        interaction_indexes=RANGES, conv_inplane=INPLANE, deform_num_heads=DEFORM_HEADS,
        n_points=POINTS, deform_ratio=DEFORM_RATIO, cffn_ratio=CFFN_RATIO, **kw)


def _loaded(state) -> ViTAdapter:
    model = _adapter()
    model.load_state_dict(_strip(convert_dinov2_m2f_backbone(state)), strict=True)
    return model.eval()


def _strip(state, prefix='backbone.'):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# --------------------------------------------------------------- official math, by hand
def _grid_sample_core(value, shapes, locations, weights):
    """MSDeformAttn's PyTorch core: bilinear samples per level, weighted sum."""
    n, _, heads, ch = value.shape
    _, lq, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * heads, ch, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))
    w_ = weights.transpose(1, 2).reshape(n * heads, 1, lq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w_).sum(-1)
    return out.view(n, heads * ch, lq).transpose(1, 2)


def _msdeform(W, pre, query, ref, value, shapes, levels):
    n, lq, c = query.shape
    v = F.linear(value, W[f'{pre}.value_proj.weight'], W[f'{pre}.value_proj.bias'])
    v = v.view(n, value.shape[1], DEFORM_HEADS, int(DEFORM_RATIO * c) // DEFORM_HEADS)
    off = F.linear(query, W[f'{pre}.sampling_offsets.weight'], W[f'{pre}.sampling_offsets.bias'])
    off = off.view(n, lq, DEFORM_HEADS, levels, POINTS, 2)
    aw = F.linear(query, W[f'{pre}.attention_weights.weight'],
                  W[f'{pre}.attention_weights.bias'])
    aw = aw.view(n, lq, DEFORM_HEADS, levels * POINTS).softmax(-1).view(
        n, lq, DEFORM_HEADS, levels, POINTS)
    shp = torch.tensor(shapes, dtype=torch.float32)
    normalizer = torch.stack([shp[:, 1], shp[:, 0]], -1)
    loc = ref[:, :, None, :, None, :] + off / normalizer[None, None, None, :, None, :]
    out = _grid_sample_core(v, shapes, loc, aw)
    return F.linear(out, W[f'{pre}.output_proj.weight'], W[f'{pre}.output_proj.bias'])


def _lnorm(W, pre, x):
    return F.layer_norm(x, (x.shape[-1],), W[f'{pre}.weight'], W[f'{pre}.bias'], 1e-6)


def _bnorm(W, pre, x):
    return F.batch_norm(x, W[f'{pre}.running_mean'], W[f'{pre}.running_var'],
                        W[f'{pre}.weight'], W[f'{pre}.bias'], False, 0.0, 1e-5)


def _ref_points(shapes):
    pts = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w),
                                indexing='ij')
        pts.append(torch.stack([xs.reshape(-1) / w, ys.reshape(-1) / h], -1))
    return torch.cat(pts)[None, :, None]


def _extract(W, pre, c, ref, x, vit_shape, hc, wc):
    c = c + _msdeform(W, f'{pre}.attn', _lnorm(W, f'{pre}.query_norm', c), ref,
                      _lnorm(W, f'{pre}.feat_norm', x), [vit_shape], 1)
    y = F.linear(_lnorm(W, f'{pre}.ffn_norm', c), W[f'{pre}.ffn.fc1.weight'],
                 W[f'{pre}.ffn.fc1.bias'])
    b, n, ch = y.shape
    k = n // 21  # the official split of the three levels
    parts = [(y[:, :16 * k], 2 * hc, 2 * wc), (y[:, 16 * k:20 * k], hc, wc),
             (y[:, 20 * k:], hc // 2, wc // 2)]
    y = torch.cat([F.conv2d(p.transpose(1, 2).reshape(b, ch, h, w),
                            W[f'{pre}.ffn.dwconv.dwconv.weight'],
                            W[f'{pre}.ffn.dwconv.dwconv.bias'], padding=1, groups=ch)
                   .flatten(2).transpose(1, 2) for p, h, w in parts], dim=1)
    y = F.linear(F.gelu(y), W[f'{pre}.ffn.fc2.weight'], W[f'{pre}.ffn.fc2.bias'])
    return c + y


def _block(W, pre, x):
    b, n, c = x.shape
    y = _lnorm(W, f'{pre}.norm1', x)
    qkv = F.linear(y, W[f'{pre}.attn.qkv.weight'], W[f'{pre}.attn.qkv.bias'])
    q, k, v = qkv.reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (c // HEADS) ** -0.5).softmax(-1)
    y = F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), W[f'{pre}.attn.proj.weight'],
                 W[f'{pre}.attn.proj.bias'])
    x = x + W[f'{pre}.gamma1'] * y
    y = _lnorm(W, f'{pre}.norm2', x)
    y = F.silu(F.linear(y, W[f'{pre}.mlp.w1.weight'], W[f'{pre}.mlp.w1.bias'])) * F.linear(
        y, W[f'{pre}.mlp.w2.weight'], W[f'{pre}.mlp.w2.bias'])
    y = F.linear(y, W[f'{pre}.mlp.w3.weight'], W[f'{pre}.mlp.w3.bias'])
    return x + W[f'{pre}.gamma2'] * y


def _official_forward(W, img):
    """The official ViTAdapter.forward (use_cls=True) on an official state dict."""
    W = _strip(W)
    bs, _, h, w = img.shape
    cshapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    vit_shape = (h // PATCH, w // PATCH)
    ref_inj, ref_ext = _ref_points([vit_shape]), _ref_points(cshapes)

    def conv_bn_relu(x, conv, bn, stride):
        x = F.conv2d(x, W[f'spm.{conv}.weight'], stride=stride, padding=1)
        return F.relu(_bnorm(W, f'spm.{bn}', x))

    s = conv_bn_relu(img, 'stem.0', 'stem.1', 2)
    s = conv_bn_relu(s, 'stem.3', 'stem.4', 1)
    s = conv_bn_relu(s, 'stem.6', 'stem.7', 1)
    s1 = F.max_pool2d(s, 3, 2, 1)
    s2 = conv_bn_relu(s1, 'conv2.0', 'conv2.1', 2)
    s3 = conv_bn_relu(s2, 'conv3.0', 'conv3.1', 2)
    s4 = conv_bn_relu(s3, 'conv4.0', 'conv4.1', 2)
    c1, c2, c3, c4 = (F.conv2d(t, W[f'spm.fc{i}.weight'], W[f'spm.fc{i}.bias'])
                      for i, t in enumerate((s1, s2, s3, s4), start=1))
    c2, c3, c4 = (t.flatten(2).transpose(1, 2) + W['level_embed'][i]
                  for i, t in enumerate((c2, c3, c4)))
    c = torch.cat([c2, c3, c4], 1)
    n2, n3 = c2.shape[1], c3.shape[1]

    x = F.conv2d(img, W['patch_embed.proj.weight'], W['patch_embed.proj.bias'], stride=PATCH)
    ht, wt = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    g = int(math.isqrt(W['pos_embed'].shape[1] - 1))
    pos = W['pos_embed'][:, 1:].reshape(1, g, g, D).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(ht, wt), mode='bicubic', align_corners=False)
    pos = torch.cat([W['pos_embed'][:, :1], pos.reshape(1, D, -1).permute(0, 2, 1)], 1)
    x = torch.cat([W['cls_token'].expand(bs, -1, -1), x], 1) + pos
    cls, x = x[:, :1], x[:, 1:]
    hc, wc = h // 16, w // 16
    outs = []
    for i, (first, last) in enumerate(RANGES):
        pre = f'interactions.{i}'
        inj = f'{pre}.injector'
        x = x + W[f'{inj}.gamma'] * _msdeform(
            W, f'{inj}.attn', _lnorm(W, f'{inj}.query_norm', x), ref_inj,
            _lnorm(W, f'{inj}.feat_norm', c), cshapes, 3)
        x = torch.cat([cls, x], 1)
        for j in range(first, last + 1):
            x = _block(W, f'blocks.{j}', x)
        cls, x = x[:, :1], x[:, 1:]
        c = _extract(W, f'{pre}.extractor', c, ref_ext, x, vit_shape, hc, wc)
        if i == len(RANGES) - 1:
            for j in range(2):
                c = _extract(W, f'{pre}.extra_extractors.{j}', c, ref_ext, x, vit_shape, hc, wc)
        outs.append(x.transpose(1, 2).reshape(bs, D, ht, wt))
    c2 = c[:, :n2].transpose(1, 2).reshape(bs, D, 2 * hc, 2 * wc)
    c3 = c[:, n2:n2 + n3].transpose(1, 2).reshape(bs, D, hc, wc)
    c4 = c[:, n2 + n3:].transpose(1, 2).reshape(bs, D, hc // 2, wc // 2)
    c1 = F.conv_transpose2d(c2, W['up.weight'], W['up.bias'], stride=2) + c1
    sizes = [(4 * hc, 4 * wc), (2 * hc, 2 * wc), (hc, wc), (hc // 2, wc // 2)]
    feats = [t + F.interpolate(o, size=sz, mode='bilinear', align_corners=False)
             for t, o, sz in zip((c1, c2, c3, c4), outs, sizes)]
    return [_bnorm(W, f'norm{i}', f) for i, f in enumerate(feats, start=1)]


# --------------------------------------------------------------- tests
def test_official_backbone_keys_and_shapes_load_strictly():
    state = _random_official_state()
    converted = _strip(convert_dinov2_m2f_backbone(state))
    model = _adapter()
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)
    model.load_state_dict(converted, strict=True)
    # the fused SwiGLU: gate rows (official w1) first
    w12 = model.backbone.blocks[0].mlp.w12.weight
    assert torch.equal(w12[:SWIGLU], state['backbone.blocks.0.mlp.w1.weight'])
    assert torch.equal(w12[SWIGLU:], state['backbone.blocks.0.mlp.w2.weight'])


@pytest.mark.parametrize('size', [(64, 64), (64, 96), (96, 128)])
def test_forward_equals_the_official_computation(size):
    torch.manual_seed(0)
    state = _random_official_state()
    img = torch.randn(2, 3, *size)
    want = _official_forward(state, img)
    with torch.no_grad():
        got = _loaded(state)(img)
    for level, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (level, a.shape, b.shape)
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, scale), level


def test_injectors_modulate_the_vit_stream():
    """With gates at 0 the ViT maps do not depend on the convolutional branch; with the
    official gates they do (the feature that the frozen DINOv3 form does not have)."""
    state = _random_official_state()
    img = torch.randn(1, 3, 64, 64)
    model = _loaded(state)
    spm_off = {k: v for k, v in state.items()}
    spm_off['backbone.level_embed'] = state['backbone.level_embed'] + 1.0
    moved = _loaded(spm_off)
    with torch.no_grad():
        diff = (model(img)[2] - moved(img)[2]).abs().max()
    assert diff > 1e-3
    for i in range(len(RANGES)):
        state[f'backbone.interactions.{i}.injector.gamma'] = torch.zeros(D)
        spm_off[f'backbone.interactions.{i}.injector.gamma'] = torch.zeros(D)
    a, b = _loaded(state), _loaded(spm_off)
    a.add_vit_feature = b.add_vit_feature = False
    vit_a, vit_b = [], []
    a.backbone.blocks[-1].register_forward_hook(lambda m, i, o: vit_a.append(o))
    b.backbone.blocks[-1].register_forward_hook(lambda m, i, o: vit_b.append(o))
    with torch.no_grad():
        a(img), b(img)
    assert torch.equal(vit_a[0], vit_b[0])


def test_frozen_vit_still_passes_gradients_to_the_injectors():
    model = _adapter(norm_cfg=dict(type='BN'))
    model.init_weights()
    for i in range(len(RANGES)):
        model.interactions[i].injector.gamma.data.fill_(0.5)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.interactions[0].injector.attn.value_proj.weight.grad.abs().sum() > 0
    assert model.interactions[0].injector.gamma.grad.abs().sum() > 0


def test_official_init_starts_with_closed_gates_and_no_unused_vit_parts():
    model = _adapter()
    model.init_weights()
    assert all(torch.equal(b.injector.gamma, torch.zeros(D)) for b in model.interactions)
    keys = model.state_dict()
    assert not any(k.startswith(('backbone.norm.', 'backbone.mask_token')) for k in keys)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='contiguous'):
        _adapter_ranges([[0, 1], [3, 3]])
    with pytest.raises(ValueError, match='exceeds the ViT depth'):
        _adapter_ranges([[0, 1], [2, 9]])
    with pytest.raises(ValueError, match='DinoViTAdapter'):
        ViTAdapter(backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16',
                                 depth=2), interaction_indexes=[[0, 1]], deform_num_heads=6)
    state = _random_official_state()
    state['backbone.blocks.0.mlp.extra.weight'] = torch.zeros(1)
    with pytest.raises(KeyError, match='blocks.0.mlp.extra.weight'):
        convert_dinov2_m2f_backbone(state)


def _adapter_ranges(ranges):
    return ViTAdapter(backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14',
                                    depth=DEPTH), interaction_indexes=ranges,
                      deform_num_heads=6)


def test_checkpointed_vit_blocks_give_the_same_gradients():
    """The leaf config checkpoints the frozen ViT's blocks (``with_cp``): same outputs and
    injector gradients as without."""
    torch.manual_seed(0)
    plain = _adapter(norm_cfg=dict(type='BN'))
    plain.init_weights()
    for block in plain.interactions:
        block.injector.gamma.data.fill_(0.5)
    ckpt = _adapter(norm_cfg=dict(type='BN'))
    ckpt.load_state_dict(plain.state_dict())
    ckpt.backbone.with_cp = True
    img = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        sum(o.square().mean() for o in model(img)).backward()
        grads.append(model.interactions[0].injector.attn.value_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0


def test_pretrained_official_backbone_file_loads_through_the_vit_init_cfg(tmp_path):
    """An official DINOv2 backbone file (with the final norm and mask token this adapter
    drops) loads strictly through the ViT's ``init_cfg``; any other extra key still fails."""
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    torch.manual_seed(0)
    vit = DinoVisionTransformer('dinov2_vits14', depth=2)
    vit.init_weights()
    official = {k: torch.randn_like(v) for k, v in vit.state_dict().items()}
    assert 'norm.weight' in official and 'mask_token' in official
    path = str(tmp_path / 'dinov2_vits14_pretrain.pth')
    torch.save(official, path)

    def build(checkpoint):
        return ViTAdapter(backbone=dict(type='dino_mm.DinoVisionTransformer',
                                        arch='dinov2_vits14', depth=2,
                                        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
                          interaction_indexes=[[0, 0], [1, 1]], deform_num_heads=6,
                          norm_cfg=dict(type='BN'))

    model = build(path)
    model.init_weights()
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], official[k]) for k in own)
    torch.save(dict(official, **{'blocks.1.extra': torch.zeros(1)}), path)
    with pytest.raises(RuntimeError, match='blocks.1.extra'):
        build(path).init_weights()
