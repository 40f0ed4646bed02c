"""dino_mm.PlainDETR: the official DINOv3 COCO detector (Plain-DETR), inference path.

The key/shape manifest below is a record of facts read from the official code
(facebookresearch/dinov3): ``dinov3/eval/detection/models/detr.py`` (heads, query
embedding, input projection, head sharing with the decoder), ``transformer.py``
(``TransformerReParam``: level embed, two-stage layers, ``enc_output_proj``),
``transformer_encoder.py`` (encoder layers), ``global_rpe_decomp_decoder.py``
(decoder layers, ``cpb_mlp1/2``, ``final_layer_norm``), ``backbone.py`` + ``windows.py``
(``backbone.0._backbone.backbone`` nesting, channel count), ``dinov3/models/
vision_transformer.py`` + ``dinov3/layers/*`` (ViT keys) and ``dinov3/hub/detectors.py``
(released hyper-parameters). It is deliberately not derived from the dino_mm modules.
"""
import math
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn

from dino_mm.models.detection.plain_detr import COCO_CATEGORY_IDS, PlainDETR
from dino_mm.models.detection.plain_detr.backbone import WindowedFeatures, window_sizes
from dino_mm.models.detection.plain_detr.box_ops import delta_to_box
from dino_mm.models.detection.plain_detr.postprocess import PlainDETRPostProcess
from dino_mm.models.detection.plain_detr.transformer import GlobalRPECrossAttention

# The encoder FFN is 2048 wide whatever the decoder's: build_transformer (transformer.py)
# does not pass dim_feedforward on to the encoder.
TINY = dict(vit_dim=64, vit_depth=4, vit_heads=4, hidden=64, ffn=128, enc_ffn=2048,
            enc_layers=2, dec_layers=2, num_classes=91, num_queries=10 + 20, rpe_hidden=32,
            nheads=8, n_windows_sqrt=3)
# dinov3/hub/detectors.py:53-94 (+ the ViT-7B of dinov3/hub/backbones.py).
RELEASED = dict(vit_dim=4096, vit_depth=40, vit_heads=32, hidden=768, ffn=2048,
                enc_ffn=2048, enc_layers=6, dec_layers=6, num_classes=91, num_queries=1500 + 1500,
                rpe_hidden=512, nheads=8, n_windows_sqrt=3)


def official_manifest(*, vit_dim: int, vit_depth: int, vit_heads: int, hidden: int,
                      ffn: int, enc_ffn: int, enc_layers: int, dec_layers: int,
                      num_classes: int, num_queries: int, rpe_hidden: int, nheads: int,
                      n_windows_sqrt: int,
                      ffn_ratio: float = 3.0, n_storage: int = 4, patch: int = 16
                      ) -> Dict[str, Tuple[int, ...]]:
    """Official state-dict keys -> shapes of the DINOv3 Plain-DETR on a ViT-7B-style ViT."""
    keys: Dict[str, Tuple[int, ...]] = {}
    vit = 'backbone.0._backbone.backbone.' if n_windows_sqrt > 0 else 'backbone.0.backbone.'
    D = vit_dim
    d = int(D * ffn_ratio * 2 / 3)
    swiglu = d + (-d % 64)  # SwiGLU hidden aligned to 64 ('swiglu64')
    keys.update({vit + 'cls_token': (1, 1, D), vit + 'storage_tokens': (1, n_storage, D),
                 vit + 'mask_token': (1, D), vit + 'patch_embed.proj.weight': (D, 3, patch, patch),
                 vit + 'patch_embed.proj.bias': (D,),
                 vit + 'rope_embed.periods': (D // vit_heads // 4,),
                 vit + 'norm.weight': (D,), vit + 'norm.bias': (D,),
                 vit + 'local_cls_norm.weight': (D,), vit + 'local_cls_norm.bias': (D,)})
    for i in range(vit_depth):
        b = f'{vit}blocks.{i}.'
        keys.update({b + 'norm1.weight': (D,), b + 'norm1.bias': (D,),
                     b + 'attn.qkv.weight': (3 * D, D),  # qkv_bias=False for the 7B
                     b + 'attn.proj.weight': (D, D), b + 'attn.proj.bias': (D,),
                     b + 'ls1.gamma': (D,), b + 'norm2.weight': (D,), b + 'norm2.bias': (D,),
                     b + 'mlp.w1.weight': (swiglu, D), b + 'mlp.w1.bias': (swiglu,),
                     b + 'mlp.w2.weight': (swiglu, D), b + 'mlp.w2.bias': (swiglu,),
                     b + 'mlp.w3.weight': (D, swiglu), b + 'mlp.w3.bias': (D,),
                     b + 'ls2.gamma': (D,)})
    h = hidden
    in_ch = 4 * D * (2 if n_windows_sqrt > 0 else 1)  # 4 blocks, windows + global
    keys.update({'input_proj.0.0.weight': (h, in_ch, 1, 1), 'input_proj.0.0.bias': (h,),
                 'input_proj.0.1.weight': (h,), 'input_proj.0.1.bias': (h,),
                 'query_embed.weight': (num_queries, h)})
    for prefix in ('', 'transformer.decoder.'):  # heads shared with the decoder
        for i in range(dec_layers + 1):
            keys[f'{prefix}class_embed.{i}.weight'] = (num_classes, h)
            keys[f'{prefix}class_embed.{i}.bias'] = (num_classes,)
            for j, out in enumerate((h, h, 4)):
                keys[f'{prefix}bbox_embed.{i}.layers.{j}.weight'] = (out, h)
                keys[f'{prefix}bbox_embed.{i}.layers.{j}.bias'] = (out,)
    t = 'transformer.'
    keys.update({t + 'level_embed': (1, h), t + 'enc_output.weight': (h, h),
                 t + 'enc_output.bias': (h,), t + 'enc_output_norm.weight': (h,),
                 t + 'enc_output_norm.bias': (h,), t + 'pos_trans.weight': (2 * h, 2 * h),
                 t + 'pos_trans.bias': (2 * h,), t + 'pos_trans_norm.weight': (2 * h,),
                 t + 'pos_trans_norm.bias': (2 * h,)})
    # Proposal strides 8/16/32/64 from stride 16: deconv / identity / conv / conv-LN-GELU-conv.
    for name in ('enc_output_proj.0.0', 'enc_output_proj.2.0', 'enc_output_proj.3.0',
                 'enc_output_proj.3.3'):
        keys[f'{t}{name}.weight'] = (h, h, 2, 2)
        keys[f'{t}{name}.bias'] = (h,)
    keys[t + 'enc_output_proj.3.1.ln.weight'] = (h,)
    keys[t + 'enc_output_proj.3.1.ln.bias'] = (h,)

    def mha(p: str) -> None:
        keys.update({p + 'in_proj_weight': (3 * h, h), p + 'in_proj_bias': (3 * h,),
                     p + 'out_proj.weight': (h, h), p + 'out_proj.bias': (h,)})

    def ffn_norms(p: str, norms: Tuple[str, ...], ffn: int) -> None:
        keys.update({p + 'linear1.weight': (ffn, h), p + 'linear1.bias': (ffn,),
                     p + 'linear2.weight': (h, ffn), p + 'linear2.bias': (h,)})
        for n in norms:
            keys[p + n + '.weight'] = (h,)
            keys[p + n + '.bias'] = (h,)

    for i in range(enc_layers):
        p = f'{t}encoder.layers.{i}.'
        mha(p + 'self_attn.')
        ffn_norms(p, ('norm1', 'norm2'), enc_ffn)
    for i in range(dec_layers):
        p = f'{t}decoder.layers.{i}.'
        mha(p + 'self_attn.')
        ffn_norms(p, ('norm1', 'norm2', 'norm3'), ffn)
        for mlp in ('cpb_mlp1', 'cpb_mlp2'):
            keys[f'{p}cross_attn.{mlp}.0.weight'] = (rpe_hidden, 2)
            keys[f'{p}cross_attn.{mlp}.0.bias'] = (rpe_hidden,)
            keys[f'{p}cross_attn.{mlp}.2.weight'] = (nheads, rpe_hidden)  # no bias
        for lin in ('q', 'k', 'v', 'proj'):
            keys[f'{p}cross_attn.{lin}.weight'] = (h, h)
            keys[f'{p}cross_attn.{lin}.bias'] = (h,)
    keys[t + 'decoder.final_layer_norm.weight'] = (h,)
    keys[t + 'decoder.final_layer_norm.bias'] = (h,)
    return keys


def _build(sizes: dict, **kw) -> PlainDETR:
    return PlainDETR(
        backbone=dict(type='DinoVisionTransformer', arch='dinov3_vit7b16',
                      embed_dim=sizes['vit_dim'], depth=sizes['vit_depth'],
                      num_heads=sizes['vit_heads']),
        hidden_dim=sizes['hidden'], nheads=sizes['nheads'], dim_feedforward=sizes['ffn'],
        num_encoder_layers=sizes['enc_layers'], num_decoder_layers=sizes['dec_layers'],
        num_queries_one2one=10, num_queries_one2many=sizes['num_queries'] - 10,
        rpe_hidden_dim=sizes['rpe_hidden'], n_windows_sqrt=sizes['n_windows_sqrt'], **kw)


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return _build(TINY, topk=50).eval()


def _shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_manifest_matches_tiny_model(tiny):
    assert _shapes(tiny) == official_manifest(**TINY)


def test_manifest_matches_released_sizes_on_meta():
    with torch.device('meta'):  # no memory: the 7B detector's keys and shapes only
        model = PlainDETR()
    got = _shapes(model)
    want = official_manifest(**RELEASED)
    assert sorted(set(got) ^ set(want)) == []
    assert got == want
    assert want['input_proj.0.0.weight'] == (768, 32768, 1, 1)
    assert model.backbone[0]._backbone.layers_to_use == [9, 19, 29, 39]


def _random_official_state(sizes: dict) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in official_manifest(**sizes).items()}
    for k in list(state):  # shared heads: one tensor under both names, as official
        if k.startswith(('class_embed.', 'bbox_embed.')):
            state[k] = state['transformer.decoder.' + k]
        if k.endswith(('norm.weight', 'norm1.weight', 'norm2.weight', 'norm3.weight',
                       'ln.weight', 'input_proj.0.1.weight', 'ls1.gamma', 'ls2.gamma')):
            state[k] = 1 + state[k]
    state['backbone.0._backbone.backbone.rope_embed.periods'] = torch.tensor([1., 2., 4., 8.])
    return state


def _batch(model: PlainDETR):
    from mmdet.structures import DetDataSample
    g = torch.Generator().manual_seed(2)
    images, samples = [], []
    for (h, w), ori in (((96, 128), (192, 256)), ((112, 80), (112, 80))):
        images.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        s = DetDataSample()
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=ori,
                            scale_factor=(w / ori[1], h / ori[0])))
        samples.append(s)
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), False)


def test_official_state_loads_strictly_and_predicts(tiny):
    state = _random_official_state(TINY)
    model = _build(TINY, topk=50).eval()
    model.load_state_dict(state, strict=True)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert model.class_embed[0].weight is model.transformer.decoder.class_embed[0].weight

    data = _batch(model)
    assert data['inputs'].shape == (2, 3, 112, 128)  # padded batch
    results = model.predict(data['inputs'], data['data_samples'], rescale=True)
    for res, (ori_h, ori_w) in zip(results, ((192, 256), (112, 80))):
        inst = res.pred_instances
        assert len(inst) > 0 and len(inst) <= 50
        assert torch.isfinite(inst.bboxes).all()
        b = inst.bboxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= ori_w).all() and (b[:, 3] <= ori_h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert ((inst.labels >= 0) & (inst.labels < 80)).all()

    raw = model.forward_official(data['inputs'],
                                 model.padding_mask(data['inputs'], data['data_samples']))
    assert raw['pred_logits'].shape == (2, 10, 91)  # one-to-one queries only
    assert len(raw['aux_outputs']) == TINY['dec_layers'] - 1
    # The mmengine test loop path: preprocess + predict in one call.
    out = model.test_step(dict(inputs=[torch.zeros(3, 112, 80, dtype=torch.uint8)],
                               data_samples=[_batch(model)['data_samples'][1]]))
    assert out[0].pred_instances.bboxes.shape[-1] == 4


def test_head_only_file_plus_backbone(tiny):
    state = _random_official_state(TINY)
    prefix = 'backbone.0._backbone.backbone.'
    vit = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    head = {k: v for k, v in state.items()
            if not k.startswith((prefix, 'transformer.decoder.class_embed',
                                 'transformer.decoder.bbox_embed'))}
    model = _build(TINY)
    model.load_official_state_dict(dict(model=head), backbone_state=vit)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_label_mapping_drops_unused_ids():
    assert len(COCO_CATEGORY_IDS) == 80
    model = _build(TINY)
    table = model.category_to_label
    assert table[1] == 0 and table[90] == 79 and table[13] == 11
    assert (table[[0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83]] == -1).all()
    assert int((table >= 0).sum()) == 80


@pytest.mark.parametrize('mutate', ['unexpected', 'shape', 'missing'])
def test_bad_state_dict_names_the_key(mutate):
    state = _random_official_state(TINY)
    if mutate == 'unexpected':
        key = 'transformer.decoder.layers.0.cross_attn.cpb_mlp3.0.weight'
        state[key] = torch.zeros(32, 2)
    elif mutate == 'shape':
        key = 'transformer.decoder.layers.1.cross_attn.cpb_mlp1.0.weight'
        state[key] = torch.zeros(16, 2)
    else:
        key = 'transformer.enc_output_proj.3.1.ln.bias'
        del state[key]
    with pytest.raises(RuntimeError, match=key.replace('.', r'\.')):
        _build(TINY).load_state_dict(state, strict=True)


def test_box_rpe_cross_attention_matches_hand_formula():
    torch.manual_seed(3)
    heads, dim, stride, (fh, fw) = 2, 8, 16, (3, 4)
    attn = GlobalRPECrossAttention(dim, heads, rpe_hidden_dim=5, feature_stride=stride)
    boxes = torch.tensor([[[30.0, 20.0, 40.0, 24.0], [10.0, 40.0, 8.0, 30.0]]])  # cxcywh
    q = torch.randn(1, 2, dim)
    k = torch.randn(1, fh * fw, dim)
    v = torch.randn(1, fh * fw, dim)
    pad = torch.zeros(1, fh * fw, dtype=torch.bool)
    pad[0, -1] = True
    with torch.no_grad():
        out = attn(q, boxes, k, v, (fh, fw), pad)

    def mlp(seq, a, b):  # Linear(2, hidden) -> ReLU -> Linear(hidden, heads, no bias)
        w1, b1, w2 = seq[0].weight, seq[0].bias, seq[2].weight
        return w2 @ torch.relu(w1 @ torch.tensor([a, b]) + b1)

    with torch.no_grad():
        qh = attn.q(q).view(2, heads, dim // heads)
        kh = attn.k(k).view(fh * fw, heads, dim // heads)
        vh = attn.v(v).view(fh * fw, heads, dim // heads)
        mixed = torch.zeros(2, heads, dim // heads)
        for qi in range(2):
            cx, cy, w, h = boxes[0, qi].tolist()
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            logits = torch.zeros(heads, fh * fw)
            for i in range(fh):
                for j in range(fw):
                    px, py = (j + 0.5) * stride, (i + 0.5) * stride
                    bias = (mlp(attn.cpb_mlp1, x1 - px, x2 - px)
                            + mlp(attn.cpb_mlp2, y1 - py, y2 - py))
                    cell = i * fw + j
                    dots = (qh[qi] * kh[cell]).sum(-1) / math.sqrt(dim // heads)
                    logits[:, cell] = dots + bias - 100.0 * float(pad[0, cell])
            weights = logits.softmax(-1)  # heads, cells
            mixed[qi] = torch.einsum('hn,nhc->hc', weights, vh)
        expected = attn.proj(mixed.reshape(1, 2, dim))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_delta_decoding_matches_hand_formula():
    ref = torch.tensor([[[50.0, 40.0, 20.0, 10.0]]])
    delta = torch.tensor([[[0.1, -0.2, math.log(2.0), 5.0]]])  # dh is clamped
    max_ratio = abs(math.log(16 / 1000))
    cx, cy = 50 + 20 * 0.1, 40 + 10 * -0.2
    w, h = 20 * 2.0, 10 * math.exp(max_ratio)
    valid = (torch.tensor([[[96]]]), torch.tensor([[[128]]]))  # (h, w)
    want = torch.tensor([[[cx - w / 2, max(cy - h / 2, 0.0), cx + w / 2, min(cy + h / 2, 96)]]])
    torch.testing.assert_close(delta_to_box(ref, delta, valid), want, atol=1e-5, rtol=0)
    raw = delta_to_box(ref, delta)
    torch.testing.assert_close(raw[..., 3], torch.tensor([[cy + h / 2]]), atol=1e-4, rtol=0)


def test_postprocess_topk_matches_hand_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, 4, generator=g)
    boxes = torch.tensor([[[10.0, 10.0, 8.0, 6.0], [50.0, 30.0, 40.0, 80.0],
                           [5.0, 5.0, 20.0, 20.0]]])
    res = PlainDETRPostProcess(topk=5)(dict(pred_logits=logits, pred_boxes=boxes),
                                       torch.tensor([[40, 60]]), torch.tensor([[80, 90]]))[0]
    pairs = sorted(((torch.sigmoid(logits[0, q, c]).item(), q, c)
                    for q in range(3) for c in range(4)), reverse=True)[:5]
    for n, (score, q, c) in enumerate(pairs):
        cx, cy, w, h = boxes[0, q].tolist()
        x1, x2 = [min(max(x, 0.0), 60.0) * 90 / 60 for x in (cx - w / 2, cx + w / 2)]
        y1, y2 = [min(max(y, 0.0), 40.0) * 80 / 40 for y in (cy - h / 2, cy + h / 2)]
        assert abs(res['scores'][n].item() - score) < 1e-6
        assert res['labels'][n].item() == c
        torch.testing.assert_close(res['boxes'][n], torch.tensor([x1, y1, x2, y2]),
                                   atol=1e-5, rtol=0)


class _PatchMean(nn.Module):
    """Stand-in feature module: per-patch channel means (so tiling is checkable)."""
    patch_size = 16
    num_channels = 3

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 16)


def test_windows_tile_back_to_the_full_map():
    assert window_sizes(112, 3, 16) == [48, 48, 16]
    assert window_sizes(128, 3, 16) == [48, 48, 32]
    assert window_sizes(96, 3, 16) == [32, 32, 32]
    with pytest.raises(ValueError, match='too small'):
        window_sizes(32, 3, 16)
    x = torch.randn(2, 3, 112, 128)
    out = WindowedFeatures(_PatchMean(), 3)(x)
    assert out.shape == (2, 6, 7, 8)
    torch.testing.assert_close(out[:, 3:], nn.functional.avg_pool2d(x, 16))
    from torchvision.transforms.v2 import functional as TF
    small = TF.resize(x, [48, 48], antialias=True)
    want = TF.resize(nn.functional.avg_pool2d(small, 16), [7, 8], antialias=True)
    torch.testing.assert_close(out[:, :3], want)


def test_registry_build():
    from dino_mm.registry import MODELS
    model = MODELS.build(dict(
        type='dino_mm.PlainDETR',
        backbone=dict(type='DinoVisionTransformer', arch='dinov3_vit7b16', embed_dim=64,
                      depth=4, num_heads=4),
        hidden_dim=64, num_encoder_layers=1, num_decoder_layers=1, num_queries_one2one=5,
        num_queries_one2many=5, rpe_hidden_dim=16, criterion=dict(k_one2many=3)))
    assert isinstance(model, PlainDETR) and model.criterion.k_one2many == 3


def test_official_files_evaluate_and_draw_through_tools_test(tmp_path, real_images):
    """``tools/test.py CONFIG none --show-dir`` on the official Plain-DETR config (a tiny
    ViT and head swapped in), with a head-only file and a backbone file in the official
    layouts, on a COCO-layout dataset: loads both strictly, evaluates COCO box AP, draws."""
    import json
    import os
    import os.path as osp
    import subprocess
    import sys

    from tests.detection.test_detection import _write_tiny_coco
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    coco = str(tmp_path / 'coco') + '/'
    _write_tiny_coco(coco, real_images)
    official = _random_official_state(TINY)
    prefix = 'backbone.0._backbone.backbone.'
    head = str(tmp_path / 'dinov3_vit7b16_coco2017_detr_head-b0235ff7.pth')
    vit = str(tmp_path / 'vit.pth')
    torch.save({'model': {k: v for k, v in official.items() if not k.startswith(prefix)}}, head)
    torch.save({k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}, vit)
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(128, 96), keep_ratio=True),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                      'img_shape', 'scale_factor'))]
    cfg = tmp_path / 'tiny_plain_detr.py'
    cfg.write_text('\n'.join([
        f"_base_ = [{osp.join(root, 'configs/detection/plain-detr_dinov3-vit7b16_official_coco.py')!r}]",
        f'model = dict(backbone=dict(embed_dim={TINY["vit_dim"]}, depth={TINY["vit_depth"]}, '
        f'num_heads={TINY["vit_heads"]}, init_cfg=dict(checkpoint={vit!r})), '
        f'init_cfg=dict(checkpoint={head!r}), hidden_dim={TINY["hidden"]}, '
        f'dim_feedforward={TINY["ffn"]}, num_encoder_layers={TINY["enc_layers"]}, '
        f'num_decoder_layers={TINY["dec_layers"]}, num_queries_one2one=10, '
        f'num_queries_one2many={TINY["num_queries"] - 10}, '
        f'rpe_hidden_dim={TINY["rpe_hidden"]}, topk=10 * 91, category_ids=[1, 2])',
        f'test_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict('
        f"data_root={coco!r}, metainfo=dict(classes=('circle', 'square')), "
        f'pipeline={pipeline!r}))',
        f"test_evaluator = dict(ann_file={coco + 'annotations/instances_val2017.json'!r})",
    ]) + '\n')
    show, out = str(tmp_path / 'show'), str(tmp_path / 'metrics.json')
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, 'tools/test.py', str(cfg), 'none', '--work-dir',
                        str(tmp_path / 'wd'), '--show-dir', show, '--out', out], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    metrics = json.load(open(out))
    assert 0.0 <= metrics.get('coco/bbox_mAP', -1) <= 1.0, (metrics, p.stdout[-3000:])
    pictures = [f for _, _, fs in os.walk(show) for f in fs if f.endswith(('.jpg', '.png'))]
    assert len(pictures) == 4
