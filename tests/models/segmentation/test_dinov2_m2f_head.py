"""DINOv2 ViT-g Mask2Former (mmseg 0.x) ``decode_head`` -> dino_mm's mmseg/mmdet head.

The official keys are recorded facts (:func:`dinov2_m2f_head_manifest`); the numeric tests
run one official decoder layer written out by hand from the official formulas, and the
legacy mmcv ``BaseTransformerLayer`` the official head is built from, against dino_mm's
converted layers.
"""
import pytest
import torch
import torch.nn.functional as F

from tests.oracles import require

require('mmdet.models')
require('mmcv.ops')

from dino_mm.models.segmentation import convert_dinov2_m2f_head  # noqa: E402
from dino_mm.models.segmentation.official_m2f import is_dinov2_m2f  # noqa: E402

PREFIX = 'decode_head.'
DEC_ORDER = ('cross_attn', 'norm', 'self_attn', 'norm', 'ffn', 'norm')
ENC_ORDER = ('self_attn', 'norm', 'ffn', 'norm')

# The released dinov2_vitg14_ade20k_m2f recipe (ViT-Adapter ViT-g, mmseg 0.x). Its config
# file is hosted next to the checkpoint, not in the dinov2 repository; these values are the
# ViT-Adapter Mask2Former recipe the project was asked to match.
OFFICIAL_RECIPE = dict(in_channels=[1536] * 4, feat=1024, out=1024, enc_layers=6,
                       enc_heads=32, enc_ffn=4096, dec_layers=9, dec_ffn=4096, queries=200,
                       classes=150)


def dinov2_m2f_head_manifest(in_channels, feat, out, enc_layers, enc_heads, enc_ffn,
                             dec_layers, dec_ffn, queries, classes, levels=3, points=4):
    """Official ``decode_head.*`` keys and shapes of the DINOv2 Mask2Former segmentor.

    Recorded from ``dinov2/eval/segmentation_m2f/models/decode_heads/mask2former_head.py``
    (``Mask2FormerHead``: ``pixel_decoder``, ``transformer_decoder`` (mmcv-1.x
    ``DetrTransformerDecoder`` of ``DetrTransformerDecoderLayer``s, ``post_norm``),
    ``decoder_input_projs`` = Identity when widths agree, ``query_embed``/``query_feat``
    Embeddings, ``level_embed``, ``cls_embed``, a 5-entry ``mask_embed`` Sequential,
    ``conv_seg`` set to None), ``models/plugins/msdeformattn_pixel_decoder.py``
    (``input_convs`` ConvModules with bias for the 3 lowest-resolution levels, a
    ``DetrTransformerEncoder`` of ``BaseTransformerLayer``s with ``operation_order=
    ('self_attn', 'norm', 'ffn', 'norm')`` and no post norm, a ``level_encoding``
    Embedding, bias-free ``lateral_convs``/``output_convs`` ConvModules with GN for the
    remaining level, ``mask_feature``) and ``models/utils/transformer.py`` (``FFN``:
    ``layers = Sequential(Sequential(Linear, act, Dropout), Linear, Dropout)``; mmcv's
    ``MultiScaleDeformableAttention``: ``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``; mmcv's ``MultiheadAttention`` wrapping
    ``nn.MultiheadAttention`` as ``attn``). In a decoder layer the attentions and norms
    are numbered in ``operation_order`` (``('cross_attn', 'norm', 'self_attn', 'norm',
    'ffn', 'norm')``): ``attentions.0`` is the cross-attention. The positional encodings
    and the point generator hold no tensors.
    """
    out_ = {}

    def add(name, **shapes):
        out_.update({f'{PREFIX}{name}.{k}': tuple(v) for k, v in shapes.items()})

    pd = 'pixel_decoder'
    for i, cin in enumerate(in_channels[::-1][:levels]):  # strides 32, 16, 8
        add(f'{pd}.input_convs.{i}.conv', weight=(feat, cin, 1, 1), bias=(feat, ))
        add(f'{pd}.input_convs.{i}.gn', weight=(feat, ), bias=(feat, ))
    for i in range(enc_layers):
        e = f'{pd}.encoder.layers.{i}'
        hlp = enc_heads * levels * points
        add(f'{e}.attentions.0.sampling_offsets', weight=(hlp * 2, feat), bias=(hlp * 2, ))
        add(f'{e}.attentions.0.attention_weights', weight=(hlp, feat), bias=(hlp, ))
        add(f'{e}.attentions.0.value_proj', weight=(feat, feat), bias=(feat, ))
        add(f'{e}.attentions.0.output_proj', weight=(feat, feat), bias=(feat, ))
        add(f'{e}.ffns.0.layers.0.0', weight=(enc_ffn, feat), bias=(enc_ffn, ))
        add(f'{e}.ffns.0.layers.1', weight=(feat, enc_ffn), bias=(feat, ))
        for n in range(2):
            add(f'{e}.norms.{n}', weight=(feat, ), bias=(feat, ))
    add(f'{pd}.level_encoding', weight=(levels, feat))
    for j, i in enumerate(range(len(in_channels) - levels - 1, -1, -1)):
        add(f'{pd}.lateral_convs.{j}.conv', weight=(feat, in_channels[i], 1, 1))
        add(f'{pd}.lateral_convs.{j}.gn', weight=(feat, ), bias=(feat, ))
        add(f'{pd}.output_convs.{j}.conv', weight=(feat, feat, 3, 3))
        add(f'{pd}.output_convs.{j}.gn', weight=(feat, ), bias=(feat, ))
    add(f'{pd}.mask_feature', weight=(out, feat, 1, 1), bias=(out, ))
    for i in range(dec_layers):
        d = f'transformer_decoder.layers.{i}'
        for a in range(2):
            add(f'{d}.attentions.{a}.attn', in_proj_weight=(3 * feat, feat),
                in_proj_bias=(3 * feat, ))
            add(f'{d}.attentions.{a}.attn.out_proj', weight=(feat, feat), bias=(feat, ))
        add(f'{d}.ffns.0.layers.0.0', weight=(dec_ffn, feat), bias=(dec_ffn, ))
        add(f'{d}.ffns.0.layers.1', weight=(feat, dec_ffn), bias=(feat, ))
        for n in range(3):
            add(f'{d}.norms.{n}', weight=(feat, ), bias=(feat, ))
    add('transformer_decoder.post_norm', weight=(feat, ), bias=(feat, ))
    add('query_embed', weight=(queries, feat))
    add('query_feat', weight=(queries, feat))
    add('level_embed', weight=(levels, feat))
    add('cls_embed', weight=(classes + 1, feat), bias=(classes + 1, ))
    add('mask_embed.0', weight=(feat, feat), bias=(feat, ))
    add('mask_embed.2', weight=(feat, feat), bias=(feat, ))
    add('mask_embed.4', weight=(out, feat), bias=(out, ))
    return out_


def _model(feat, dim, depth=4, **sizes):
    from dino_mm.hub.segmentors import _m2f_model
    bk = {} if dim == 1536 else dict(embed_dim=dim, num_heads=2)
    ak = {} if dim == 1536 else dict(conv_inplane=8)
    return _m2f_model('dinov2_vitg14', 1536, [0, 1, 2, 3], feat, 4 if dim != 1536 else 24,
                      dict(mode='whole'), dict(depth=depth, **bk), ak, **sizes)


def _manifest_for(head, dim):
    """The manifest at the sizes ``head`` was built with (read off the built modules)."""
    enc, dec = head.pixel_decoder.encoder.layers[0], head.transformer_decoder.layers[0]
    return dinov2_m2f_head_manifest(
        [dim] * 4, head.pixel_decoder.level_encoding.embedding_dim,
        head.pixel_decoder.mask_feature.out_channels, len(head.pixel_decoder.encoder.layers),
        enc.self_attn.num_heads, enc.ffn.feedforward_channels,
        len(head.transformer_decoder.layers), dec.ffn.feedforward_channels,
        head.num_queries, head.num_classes)


def _random_state(manifest, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in manifest.items():
        v = torch.randn(shape, generator=g) * 0.1
        if '.norms.' in k or '.gn.' in k or 'post_norm' in k:
            v = v + (1.0 if k.endswith('weight') else 0.0)
        state[k] = v
    return state


@pytest.fixture(scope='module')
def small():
    torch.manual_seed(0)
    model = _model(feat=64, dim=32).eval()
    return model, _manifest_for(model.decode_head, 32)


def test_full_size_manifest_is_the_heads():
    """At the released sizes (in 1536, feat 1024, 32 heads, FFN 4096, 200 queries, 6 + 9
    layers) the converted official manifest is exactly the head's keys and shapes."""
    r = OFFICIAL_RECIPE
    model = _model(feat=r['feat'], dim=r['in_channels'][0], num_queries=r['queries'],
                   attn_heads=r['enc_heads'], encoder_ffn=r['enc_ffn'],
                   decoder_ffn=r['dec_ffn'])
    own = {PREFIX + k: tuple(v.shape) for k, v in model.decode_head.state_dict().items()}
    official = dinov2_m2f_head_manifest(**r)
    # input convs 3x4, encoder 6x16, level encoding, lateral/output convs 6, mask feature
    # 2, decoder 9x18, post norm 2, query embed/feat + level embed 3, cls 2, mask MLP 6
    assert len(official) == 12 + 96 + 1 + 6 + 2 + 162 + 2 + 3 + 2 + 6 == 292
    converted = convert_dinov2_m2f_head(
        {k: torch.empty(s, device='meta') for k, s in official.items()})
    assert set(converted) == set(own), (sorted(set(converted) - set(own))[:5],
                                        sorted(set(own) - set(converted))[:5])
    assert {k: tuple(v.shape) for k, v in converted.items()} == own


def test_random_official_head_loads_strictly_fills_everything_and_predicts(small):
    from tests.models.segmentation.test_vit_adapter import _samples
    model, manifest = small
    state = _random_state(manifest)
    backbone = {'backbone.backbone.cls_token': torch.zeros(1, 1, 32),
                'backbone.spm.stem.0.weight': torch.zeros(8, 3, 3, 3)}
    converted = convert_dinov2_m2f_head(dict(backbone, **state))
    assert not any(k.startswith('backbone.') for k in converted)
    assert len(converted) == len(state)
    head = model.decode_head
    own = head.state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        PREFIX + k: tuple(v.shape) for k, v in own.items()}
    head.load_state_dict({k[len(PREFIX):]: v for k, v in converted.items()}, strict=True)
    # every head tensor now holds an official one (the random official values differ from
    # any init; a key left at init would fail here)
    after = head.state_dict()
    inverse = {id(v): k for k, v in state.items()}
    for k, v in after.items():
        src = converted[PREFIX + k]
        assert torch.equal(v, src), k
        assert id(src) in inverse  # the converter hands the official tensor through
    with torch.no_grad():
        preds = model.predict(torch.randn(1, 3, 64, 64), _samples(1, (64, 64), 150))
    logits = preds[0].seg_logits.data
    assert logits.shape == (150, 64, 64)
    assert torch.isfinite(logits).all()


def _ln(x, state, name):
    return F.layer_norm(x, x.shape[-1:], state[f'{name}.weight'], state[f'{name}.bias'], 1e-5)


def _official_mha(query, key, value, query_pos, key_pos, attn_mask, state, name, heads):
    """mmcv-1.x ``MultiheadAttention`` (batch_first=False): positions are added to query and
    key (not value), ``nn.MultiheadAttention`` runs, the input query is the identity."""
    dim = query.shape[-1]
    mha = torch.nn.MultiheadAttention(dim, heads)
    mha.load_state_dict({k: state[f'{name}.attn.{k}'] for k in
                         ('in_proj_weight', 'in_proj_bias', 'out_proj.weight',
                          'out_proj.bias')}, strict=True)
    return query + mha(query + query_pos, key + key_pos, value, attn_mask=attn_mask)[0]


def _official_decoder_layer(state, layer, heads, query, key, query_pos, key_pos, mask):
    """One official decoder layer, sequence-first, in operation_order ``('cross_attn',
    'norm', 'self_attn', 'norm', 'ffn', 'norm')``; attentions and norms counted in it."""
    p = f'{PREFIX}transformer_decoder.layers.{layer}'
    q = _official_mha(query, key, key, query_pos, key_pos, mask, state, f'{p}.attentions.0',
                      heads)
    q = _ln(q, state, f'{p}.norms.0')
    q = _official_mha(q, q, q, query_pos, query_pos, None, state, f'{p}.attentions.1', heads)
    q = _ln(q, state, f'{p}.norms.1')
    hidden = F.relu(F.linear(q, state[f'{p}.ffns.0.layers.0.0.weight'],
                             state[f'{p}.ffns.0.layers.0.0.bias']))
    q = q + F.linear(hidden, state[f'{p}.ffns.0.layers.1.weight'],
                     state[f'{p}.ffns.0.layers.1.bias'])
    return _ln(q, state, f'{p}.norms.2')


def _decoder_inputs(dim, heads, seed=1, batch=2, queries=100, keys=16):
    g = torch.Generator().manual_seed(seed)
    query, query_pos = (torch.randn(batch, queries, dim, generator=g) for _ in range(2))
    key, key_pos = (torch.randn(batch, keys, dim, generator=g) for _ in range(2))
    mask = torch.rand(batch * heads, queries, keys, generator=g) < 0.5
    mask[..., 0] = False  # no query masked from every key
    return query, key, query_pos, key_pos, mask


def _dino_decoder_layer(head, layer, query, key, query_pos, key_pos, mask):
    return head.transformer_decoder.layers[layer](
        query=query, key=key, value=key, query_pos=query_pos, key_pos=key_pos,
        cross_attn_mask=mask, query_key_padding_mask=None, key_padding_mask=None)


def test_decoder_layer_math_matches_the_official_operation_order(small):
    """The converted mmdet-3 decoder layer computes what the official layer does (written
    out here from mmcv-1.x's formulas); swapping the two attentions or two norms in the
    official file would not."""
    model, manifest = small
    head = model.decode_head
    heads = head.num_heads
    state = _random_state(manifest, seed=3)
    head.load_state_dict({k[len(PREFIX):]: v for k, v in convert_dinov2_m2f_head(state).items()},
                         strict=True)
    query, key, query_pos, key_pos, mask = _decoder_inputs(head.decoder_embed_dims, heads)
    with torch.no_grad():
        for layer in (0, 4):
            ref = _official_decoder_layer(state, layer, heads, query.transpose(0, 1),
                                          key.transpose(0, 1), query_pos.transpose(0, 1),
                                          key_pos.transpose(0, 1), mask).transpose(0, 1)
            got = _dino_decoder_layer(head, layer, query, key, query_pos, key_pos, mask)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        # the check can fail: a converter mixing up attentions (or norms) is caught
        p = f'{PREFIX}transformer_decoder.layers.0.'
        for a, b in (('attentions.0.', 'attentions.1.'), ('norms.0.', 'norms.1.')):
            swapped = {k.replace(p + a, '#').replace(p + b, p + a).replace('#', p + b): v
                       for k, v in state.items()}
            head.load_state_dict({k[len(PREFIX):]: v for k, v in
                                  convert_dinov2_m2f_head(swapped).items()}, strict=True)
            got = _dino_decoder_layer(head, 0, query, key, query_pos, key_pos, mask)
            ref = _official_decoder_layer(state, 0, heads, query.transpose(0, 1),
                                          key.transpose(0, 1), query_pos.transpose(0, 1),
                                          key_pos.transpose(0, 1), mask).transpose(0, 1)
            assert (got - ref).abs().max() > 1e-2, (a, b)


def _legacy_layer(attn_cfg, ffn_channels, order, dim):
    from mmcv.cnn.bricks.transformer import BaseTransformerLayer
    return BaseTransformerLayer(
        attn_cfgs=dict(attn_cfg, embed_dims=dim, batch_first=False),
        ffn_cfgs=dict(type='FFN', embed_dims=dim, feedforward_channels=ffn_channels,
                      num_fcs=2, ffn_drop=0.0, act_cfg=dict(type='ReLU', inplace=True)),
        operation_order=order, norm_cfg=dict(type='LN'), batch_first=False).eval()


def _sub(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_layers_match_mmcv_legacy_base_transformer_layer(small):
    """mmcv still ships the ``BaseTransformerLayer`` the official head builds its layers
    from: loaded strictly with the manifest's names for one decoder and one encoder layer,
    it agrees with dino_mm's converted layers on the same inputs."""
    import mmcv.ops  # noqa: F401 (registers MultiScaleDeformableAttention)
    model, manifest = small
    head = model.decode_head
    state = _random_state(manifest, seed=5)
    head.load_state_dict({k[len(PREFIX):]: v for k, v in convert_dinov2_m2f_head(state).items()},
                         strict=True)
    dim, heads = head.decoder_embed_dims, head.num_heads
    dec = head.transformer_decoder.layers[2]
    legacy = _legacy_layer(dict(type='MultiheadAttention', num_heads=heads, attn_drop=0.0,
                                proj_drop=0.0), dec.ffn.feedforward_channels, DEC_ORDER, dim)
    legacy.load_state_dict(_sub(state, f'{PREFIX}transformer_decoder.layers.2.'), strict=True)
    query, key, query_pos, key_pos, mask = _decoder_inputs(dim, heads, seed=7)
    with torch.no_grad():
        ref = legacy(query.transpose(0, 1), key.transpose(0, 1), key.transpose(0, 1),
                     query_pos=query_pos.transpose(0, 1), key_pos=key_pos.transpose(0, 1),
                     attn_masks=[mask, None], query_key_padding_mask=None,
                     key_padding_mask=None).transpose(0, 1)
        got = _dino_decoder_layer(head, 2, query, key, query_pos, key_pos, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)

    enc = head.pixel_decoder.encoder.layers[1]
    attn = enc.self_attn
    legacy = _legacy_layer(dict(type='MultiScaleDeformableAttention', num_heads=attn.num_heads,
                                num_levels=attn.num_levels, num_points=attn.num_points,
                                dropout=0.0), enc.ffn.feedforward_channels, ENC_ORDER, dim)
    legacy.load_state_dict(_sub(state, f'{PREFIX}pixel_decoder.encoder.layers.1.'), strict=True)
    g = torch.Generator().manual_seed(9)
    shapes = torch.tensor([[2, 2], [4, 4], [8, 8]])
    n = int(shapes.prod(1).sum())
    start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    x, pos = (torch.randn(2, n, dim, generator=g) for _ in range(2))
    ref_pts = torch.rand(2, n, 3, 2, generator=g)
    pad = torch.zeros(2, n, dtype=torch.bool)
    valid = torch.ones(2, 3, 2)
    with torch.no_grad():
        ref = legacy(x.transpose(0, 1), None, None, query_pos=pos.transpose(0, 1),
                     query_key_padding_mask=pad, spatial_shapes=shapes,
                     reference_points=ref_pts, level_start_index=start).transpose(0, 1)
        got = enc(query=x, query_pos=pos, key_padding_mask=pad, spatial_shapes=shapes,
                  level_start_index=start, valid_ratios=valid, reference_points=ref_pts)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_unknown_official_keys_are_named(small):
    _, manifest = small
    state = _random_state(manifest)
    for bad in ('decode_head.foo.weight',
                'decode_head.transformer_decoder.layers.0.attentions.2.attn.in_proj_weight',
                'decode_head.pixel_decoder.encoder.layers.0.norms.2.weight',
                'decode_head.conv_seg.weight'):
        with pytest.raises(KeyError, match=bad.replace('.', r'\.')):
            convert_dinov2_m2f_head(dict(state, **{bad: torch.zeros(1)}))
    with pytest.raises(KeyError, match='no key starts with'):
        convert_dinov2_m2f_head({'state_dict': state})
    assert is_dinov2_m2f(state)
    assert not is_dinov2_m2f(convert_dinov2_m2f_head(state))
    # another prefix: only its keys are converted, and it is kept
    moved = {'model.' + k: v for k, v in state.items()}
    out = convert_dinov2_m2f_head(moved, prefix='model.decode_head.')
    assert set(out) == {'model.' + k for k in convert_dinov2_m2f_head(state)}
