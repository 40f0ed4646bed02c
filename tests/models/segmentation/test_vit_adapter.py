"""ViT-Adapter + Mask2Former: builds, trains one step and runs whole / slide inference."""
import pytest
import torch
import torch.nn.functional as F

from tests.oracles import require

require('mmdet.models')
require('mmcv.ops')

from dino_mm.models.segmentation import DinoViTAdapter  # noqa: E402
from dino_mm.registry import MODELS  # noqa: E402

DIM = 32


def _adapter(**kw):
    return DinoViTAdapter(
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', depth=4,
                      embed_dim=DIM, num_heads=2, img_size=56),
        interaction_indexes=[1, 3], conv_inplane=8, deform_num_heads=4,
        norm_cfg=dict(type='BN'), **kw)


def test_pyramid_shapes_and_frozen_vit():
    adapter = _adapter()
    adapter.init_weights()
    adapter.train()
    assert not adapter.backbone.training
    x = torch.randn(2, 3, 56, 84)
    outs = adapter(x)
    assert [tuple(o.shape) for o in outs] == [(2, DIM, 14, 21), (2, DIM, 7, 11),
                                              (2, DIM, 4, 6), (2, DIM, 2, 3)]
    sum(o.square().mean() for o in outs).backward()
    assert adapter.interactions[0].extractor.attn.value_proj.weight.grad is not None
    assert adapter.spm.fc1.weight.grad is not None
    assert all(p.grad is None for p in adapter.backbone.parameters())


def test_sizes_that_are_not_a_patch_multiple():
    adapter = _adapter().eval()
    x = torch.randn(1, 3, 50, 60)
    vit = adapter._vit_features(x)
    # The padded 56x70 ViT grid (4x5) is cut back to the image region (50/14, 60/14).
    assert [tuple(v.shape) for v in vit] == [(1, DIM, 4, 4)] * 2
    outs = adapter(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(13, 15), (7, 8), (4, 4), (2, 2)]
    assert all(torch.isfinite(o).all() for o in outs)
    # A multiple of the patch is used as is (no resampling of the ViT maps).
    x = torch.randn(1, 3, 28, 42)
    ref = adapter.backbone.get_intermediate_layers(x, n=[1, 3], reshape=True, norm=True)
    assert all(torch.equal(a, b) for a, b in zip(adapter._vit_features(x), ref))


def test_cpu_uses_mmcv_pytorch_deformable_attention(monkeypatch):
    """On CPU mmcv must take the pure-PyTorch path (the compiled op is CUDA-only)."""
    import mmcv.ops.multi_scale_deform_attn as msda
    calls = []
    original = msda.multi_scale_deformable_attn_pytorch

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(msda, 'multi_scale_deformable_attn_pytorch', spy)
    _adapter().eval()(torch.randn(1, 3, 28, 28))
    assert len(calls) == 4  # 2 interaction extractors + 2 extra extractors


def test_bad_backbone_is_reported():
    with pytest.raises(TypeError, match='get_intermediate_layers'):
        DinoViTAdapter(backbone=dict(type='mmseg.ResNetV1c', depth=18),
                       interaction_indexes=[1])


def tiny_m2f_cfg(num_classes=3, test_cfg=None):
    from mmengine import Config
    cfg = Config.fromfile('configs/_base_/models/seg_m2f.py').model
    cfg.backbone.update(
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', depth=4,
                      embed_dim=DIM, num_heads=2, img_size=56),
        interaction_indexes=[1, 3], conv_inplane=8, deform_num_heads=4,
        norm_cfg=dict(type='BN'))
    head = cfg.decode_head
    head.update(in_channels=[DIM] * 4, feat_channels=DIM, out_channels=DIM,
                num_classes=num_classes, num_queries=8)
    head.loss_cls.class_weight = [1.0] * num_classes + [0.1]
    head.pixel_decoder.norm_cfg = dict(type='GN', num_groups=4)
    head.pixel_decoder.encoder.num_layers = 1
    head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.update(embed_dims=DIM, num_heads=4)
    head.pixel_decoder.encoder.layer_cfg.ffn_cfg.update(
        embed_dims=DIM, feedforward_channels=64)
    head.pixel_decoder.positional_encoding.num_feats = DIM // 2
    head.positional_encoding.num_feats = DIM // 2
    head.transformer_decoder.num_layers = 2
    layer = head.transformer_decoder.layer_cfg
    layer.self_attn_cfg.update(embed_dims=DIM, num_heads=4)
    layer.cross_attn_cfg.update(embed_dims=DIM, num_heads=4)
    layer.ffn_cfg.update(embed_dims=DIM, feedforward_channels=64)
    head.train_cfg.num_points = 256
    cfg.data_preprocessor.size = (56, 56)
    cfg.test_cfg = test_cfg or dict(mode='whole')
    return cfg


def _samples(n, hw, num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    out = []
    for _ in range(n):
        s = SegDataSample(gt_sem_seg=PixelData(
            data=torch.randint(0, num_classes, (1, *hw))))
        s.set_metainfo(dict(img_shape=hw, pad_shape=hw, ori_shape=hw,
                            padding_size=[0, 0, 0, 0]))
        out.append(s)
    return out


def test_mask2former_train_step_and_slide_inference():
    # Slide inference is the case mmseg's own EncoderDecoder breaks for Mask2Former.
    test_cfg = dict(mode='slide', crop_size=(32, 32), stride=(32, 32))
    import mmdet.models  # noqa: F401
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(tiny_m2f_cfg(test_cfg=test_cfg))
    model.init_weights()
    model.train()
    x = torch.randn(2, 3, 42, 42)
    losses = model.loss(x, _samples(2, (42, 42), 3))
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.decode_head.cls_embed.weight.grad is not None
    assert model.backbone.spm.fc1.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.backbone.parameters())

    model.eval()
    with torch.no_grad():
        preds = model.predict(torch.randn(1, 3, 40, 50), _samples(1, (40, 50), 3))
    assert preds[0].pred_sem_seg.data.shape == (1, 40, 50)
    assert preds[0].seg_logits.data.shape == (3, 40, 50)


def official_adapter_manifest(dim, inplanes, heads, points, deform_ratio, cffn_ratio,
                              n_interactions):
    """Official ``DINOv3_Adapter`` keys and shapes (without ``backbone.``), recorded from
    ``dinov3/eval/segmentation/models/backbone/dinov3_adapter.py``: SyncBatchNorm convs in
    Sequentials, one extractor per interaction, two extra ones in the last, MSDeformAttn
    with one level and a ``deform_ratio``-wide value projection."""
    out = {'level_embed': (3, dim), 'up.weight': (dim, dim, 2, 2), 'up.bias': (dim, )}

    def bn(prefix, c):
        out.update({f'{prefix}.weight': (c, ), f'{prefix}.bias': (c, ),
                    f'{prefix}.running_mean': (c, ), f'{prefix}.running_var': (c, ),
                    f'{prefix}.num_batches_tracked': ()})

    def ln(prefix, c):
        out.update({f'{prefix}.weight': (c, ), f'{prefix}.bias': (c, )})

    def linear(prefix, cin, cout):
        out.update({f'{prefix}.weight': (cout, cin), f'{prefix}.bias': (cout, )})

    p = inplanes
    for idx, (cin, cout) in zip((0, 3, 6), ((3, p), (p, p), (p, p))):
        out[f'spm.stem.{idx}.weight'] = (cout, cin, 3, 3)
        bn(f'spm.stem.{idx + 1}', cout)
    for name, cin, cout in (('conv2', p, 2 * p), ('conv3', 2 * p, 4 * p),
                            ('conv4', 4 * p, 4 * p)):
        out[f'spm.{name}.0.weight'] = (cout, cin, 3, 3)
        bn(f'spm.{name}.1', cout)
    for i, cin in enumerate((p, 2 * p, 4 * p, 4 * p), start=1):
        out.update({f'spm.fc{i}.weight': (dim, cin, 1, 1), f'spm.fc{i}.bias': (dim, )})
        bn(f'norm{i}', dim)
    value, hidden = int(dim * deform_ratio), int(dim * cffn_ratio)
    prefixes = [f'interactions.{i}.extractor' for i in range(n_interactions)]
    prefixes += [f'interactions.{n_interactions - 1}.extra_extractors.{k}' for k in (0, 1)]
    for e in prefixes:
        ln(f'{e}.query_norm', dim)
        ln(f'{e}.feat_norm', dim)
        linear(f'{e}.attn.sampling_offsets', dim, heads * points * 2)
        linear(f'{e}.attn.attention_weights', dim, heads * points)
        linear(f'{e}.attn.value_proj', dim, value)
        linear(f'{e}.attn.output_proj', value, dim)
        linear(f'{e}.ffn.fc1', dim, hidden)
        out.update({f'{e}.ffn.dwconv.dwconv.weight': (hidden, 1, 3, 3),
                    f'{e}.ffn.dwconv.dwconv.bias': (hidden, )})
        linear(f'{e}.ffn.fc2', hidden, dim)
        ln(f'{e}.ffn_norm', dim)
    return out


def test_official_adapter_state_dict_loads_strictly():
    """A state dict with exactly the official adapter keys and shapes (random values) loads
    with strict=True and runs; dino_mm's own keys are exactly the official ones."""
    dim, heads = 64, 4
    adapter = DinoViTAdapter(
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', depth=4,
                      embed_dim=dim, num_heads=2, pos_embed_rope_rescale_coords=None),
        interaction_indexes=[0, 1, 2, 3], conv_inplane=16, deform_num_heads=heads,
        n_points=4, deform_ratio=0.5, cffn_ratio=0.25, norm_cfg=dict(type='BN'))
    manifest = official_adapter_manifest(dim, 16, heads, 4, 0.5, 0.25, 4)
    own = {k: tuple(v.shape) for k, v in adapter.state_dict().items()
           if not k.startswith('backbone.')}
    assert set(own) == set(manifest), (sorted(set(own) - set(manifest))[:5],
                                        sorted(set(manifest) - set(own))[:5])
    assert own == manifest
    torch.manual_seed(0)
    official = {k: (torch.randn(shape) * 0.05 if shape else torch.tensor(1))
                for k, shape in manifest.items()}
    for k in official:
        if k.endswith('running_var'):
            official[k] = official[k].abs() + 0.5
    full = dict(official, **{k: v for k, v in adapter.state_dict().items()
                             if k.startswith('backbone.')})
    adapter.load_state_dict(full, strict=True)
    outs = adapter.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, dim, 16, 16), (1, dim, 8, 8),
                                              (1, dim, 4, 4), (1, dim, 2, 2)]
    assert all(torch.isfinite(o).all() for o in outs)


def official_m2f_head_manifest(in_channels, dim, enc_layers, enc_heads, enc_ffn, dec_layers,
                               dec_ffn, queries, classes, points=4, levels=3):
    """Official DINOv3 Mask2Former head keys and shapes (under ``segmentation_model.1.``),
    recorded from ``dinov3/eval/segmentation/models/heads/{mask2former_head,pixel_decoder,
    mask2former_transformer_decoder}.py``: GroupNorm convs (no conv bias where a norm
    follows), detectron2 ``Conv2d`` wrappers holding ``.norm``, a 3-level deformable encoder
    with a bare ``level_encoding`` parameter, ``nn.MultiheadAttention`` decoder layers, a
    3-layer mask MLP. ``input_proj`` convs exist only where a level's width differs from
    ``dim`` (none here)."""
    out = {}

    def add(prefix, **shapes):
        out.update({f'segmentation_model.1.{prefix}.{k}': v for k, v in shapes.items()})

    for l, cin in enumerate(in_channels[::-1][:levels]):  # strides 32, 16, 8
        add(f'pixel_decoder.input_convs.{l}.0', weight=(dim, cin, 1, 1), bias=(dim, ))
        add(f'pixel_decoder.input_convs.{l}.1', weight=(dim, ), bias=(dim, ))
    out['segmentation_model.1.pixel_decoder.encoder.level_encoding'] = (levels, dim)
    for i in range(enc_layers):
        e = f'pixel_decoder.encoder.encoder.layers.{i}'
        add(f'{e}.self_attn.sampling_offsets', weight=(enc_heads * levels * points * 2, dim),
            bias=(enc_heads * levels * points * 2, ))
        add(f'{e}.self_attn.attention_weights', weight=(enc_heads * levels * points, dim),
            bias=(enc_heads * levels * points, ))
        add(f'{e}.self_attn.value_proj', weight=(dim, dim), bias=(dim, ))
        add(f'{e}.self_attn.output_proj', weight=(dim, dim), bias=(dim, ))
        add(f'{e}.norm1', weight=(dim, ), bias=(dim, ))
        add(f'{e}.linear1', weight=(enc_ffn, dim), bias=(enc_ffn, ))
        add(f'{e}.linear2', weight=(dim, enc_ffn), bias=(dim, ))
        add(f'{e}.norm2', weight=(dim, ), bias=(dim, ))
    add('pixel_decoder.mask_feature', weight=(dim, dim, 1, 1), bias=(dim, ))
    add('pixel_decoder.lateral_convs.0', weight=(dim, in_channels[0], 1, 1))
    add('pixel_decoder.lateral_convs.0.norm', weight=(dim, ), bias=(dim, ))
    add('pixel_decoder.output_convs.0', weight=(dim, dim, 3, 3))
    add('pixel_decoder.output_convs.0.norm', weight=(dim, ), bias=(dim, ))
    add('predictor.query_feat', weight=(queries, dim))
    add('predictor.query_embed', weight=(queries, dim))
    add('predictor.level_embed', weight=(levels, dim))
    for i in range(dec_layers):
        for kind, attn in (('self', 'self_attn'), ('cross', 'multihead_attn')):
            p = f'predictor.transformer_{kind}_attention_layers.{i}'
            add(f'{p}.{attn}', in_proj_weight=(3 * dim, dim), in_proj_bias=(3 * dim, ))
            add(f'{p}.{attn}.out_proj', weight=(dim, dim), bias=(dim, ))
            add(f'{p}.norm', weight=(dim, ), bias=(dim, ))
        p = f'predictor.transformer_ffn_layers.{i}'
        add(f'{p}.linear1', weight=(dec_ffn, dim), bias=(dec_ffn, ))
        add(f'{p}.linear2', weight=(dim, dec_ffn), bias=(dim, ))
        add(f'{p}.norm', weight=(dim, ), bias=(dim, ))
    add('predictor.post_norm', weight=(dim, ), bias=(dim, ))
    add('predictor.class_embed', weight=(classes + 1, dim), bias=(classes + 1, ))
    for k in range(3):
        add(f'predictor.mask_embed.layers.{k}', weight=(dim, dim), bias=(dim, ))
    return out


def test_official_m2f_segmentor_file_converts_and_loads_strictly():
    """A segmentor state dict with exactly the official keys and shapes (adapter + head
    manifests, the ViT in its official layout) converts to dino_mm's, loads strictly and
    runs; an unknown key is named, not dropped."""
    from mmengine.registry import DefaultScope

    from dino_mm.models.segmentation.official_m2f import convert_official_m2f
    import mmdet.models  # noqa: F401
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(tiny_m2f_cfg())
    own = model.state_dict()
    official = {f'segmentation_model.0.{k}': v for k, v in official_adapter_manifest(
        DIM, 8, 4, 4, 0.5, 0.25, 2).items()}
    official.update(official_m2f_head_manifest([DIM] * 4, DIM, enc_layers=1, enc_heads=4,
                                               enc_ffn=64, dec_layers=2, dec_ffn=64,
                                               queries=8, classes=3))
    torch.manual_seed(0)
    state = {k: (torch.randn(s) * 0.05 if s else torch.tensor(1)) for k, s in official.items()}
    for k in state:
        if k.endswith('running_var'):
            state[k] = state[k].abs() + 0.5
    vit = {k: v for k, v in own.items() if k.startswith('backbone.backbone.')}
    state.update({'segmentation_model.0.' + k[len('backbone.'):]: v for k, v in vit.items()})
    converted = convert_official_m2f(state)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in own.items()}
    model.load_state_dict(converted, strict=True)
    model.eval()
    with torch.no_grad():
        preds = model.predict(torch.randn(1, 3, 56, 56), _samples(1, (56, 56), 3))
    assert preds[0].seg_logits.data.shape == (3, 56, 56)
    assert torch.isfinite(preds[0].seg_logits.data).all()
    with pytest.raises(KeyError, match='segmentation_model.1.predictor.extra'):
        convert_official_m2f(dict(state, **{'segmentation_model.1.predictor.extra':
                                            torch.zeros(1)}))


def _d2_layer(state, i, heads, query, memory, query_pos, pos, mask):
    """One layer of the official DINOv3 decoder (detectron2 ``MultiScaleMaskedTransformer
    Decoder``, ``pre_norm=False``), sequence-first, from its formulas: cross-attention
    (query + query_pos -> memory + pos, value memory, masked) -> add -> norm; self-attention
    (q = k = tgt + query_pos, v = tgt) -> add -> norm; linear2(relu(linear1)) -> add -> norm."""
    p = 'segmentation_model.1.predictor.'

    def mha(name, q, k, v, attn_mask):
        m = torch.nn.MultiheadAttention(q.shape[-1], heads)
        m.load_state_dict({n: state[f'{name}.{n}'] for n in (
            'in_proj_weight', 'in_proj_bias', 'out_proj.weight', 'out_proj.bias')})
        return m(q, k, v, attn_mask=attn_mask)[0]

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f'{name}.weight'], state[f'{name}.bias'])

    c, s, f = (f'{p}transformer_{kind}_layers.{i}' for kind in
               ('cross_attention', 'self_attention', 'ffn'))
    t = ln(query + mha(f'{c}.multihead_attn', query + query_pos, memory + pos, memory, mask),
           f'{c}.norm')
    t = ln(t + mha(f'{s}.self_attn', t + query_pos, t + query_pos, t, None), f'{s}.norm')
    hidden = F.relu(F.linear(t, state[f'{f}.linear1.weight'], state[f'{f}.linear1.bias']))
    return ln(t + F.linear(hidden, state[f'{f}.linear2.weight'], state[f'{f}.linear2.bias']),
              f'{f}.norm')


def test_official_dinov3_decoder_layer_math_after_conversion():
    """The renamed detectron2 decoder layers compute, in mmdet's layer, what the official
    layer computes (cross-attention norm -> ``norms.0``, self-attention norm -> ``norms.1``,
    FFN norm -> ``norms.2``); swapping the two attentions' names would not."""
    from mmengine.registry import DefaultScope

    from dino_mm.models.segmentation.official_m2f import convert_official_m2f
    import mmdet.models  # noqa: F401
    with DefaultScope.overwrite_default_scope('mmseg'):
        head = MODELS.build(tiny_m2f_cfg()).decode_head.eval()
    heads = 4
    official = official_m2f_head_manifest([DIM] * 4, DIM, enc_layers=1, enc_heads=4,
                                          enc_ffn=64, dec_layers=2, dec_ffn=64, queries=8,
                                          classes=3)
    g = torch.Generator().manual_seed(2)
    state = {k: torch.randn(s, generator=g) * 0.3 + (1.0 if k.endswith('norm.weight') else 0)
             for k, s in official.items()}
    prefix = 'decode_head.'
    head.load_state_dict({k[len(prefix):]: v for k, v in convert_official_m2f(state).items()
                          if k.startswith(prefix)}, strict=True)
    query, query_pos = (torch.randn(2, 8, DIM, generator=g) for _ in range(2))
    memory, pos = (torch.randn(2, 12, DIM, generator=g) for _ in range(2))
    mask = torch.rand(2 * heads, 8, 12, generator=g) < 0.5
    mask[..., 0] = False

    def ours(layer):
        return head.transformer_decoder.layers[layer](
            query=query, key=memory, value=memory, query_pos=query_pos, key_pos=pos,
            cross_attn_mask=mask, query_key_padding_mask=None, key_padding_mask=None)

    def ref(st, layer):
        seq = [t.transpose(0, 1) for t in (query, memory, query_pos, pos)]
        return _d2_layer(st, layer, heads, *seq, mask).transpose(0, 1)

    with torch.no_grad():
        for layer in (0, 1):
            torch.testing.assert_close(ours(layer), ref(state, layer), atol=1e-5, rtol=0)
        p = 'segmentation_model.1.predictor.transformer_'
        swapped = {k.replace(f'{p}cross_attention_layers.0.multihead_attn',
                             f'{p}self_attention_layers.0.self_attn#')
                   .replace(f'{p}self_attention_layers.0.self_attn.',
                            f'{p}cross_attention_layers.0.multihead_attn.')
                   .replace('#', ''): v for k, v in state.items()}
        head.load_state_dict({k[len(prefix):]: v for k, v in
                              convert_official_m2f(swapped).items() if k.startswith(prefix)},
                             strict=True)
        assert (ours(0) - ref(state, 0)).abs().max() > 1e-2
