"""Training dino_mm.PlainDETR: the hybrid-matching loss against the official formulas,
gradient flow, and tools/train.py -> tools/test.py on a COCO-layout set.

The reference loss below is written from the formulas of Plain-DETR's ``SetCriterion``,
``HungarianMatcher`` (``cost_bbox_type='reparam'``) and ``train_hybrid`` (the loss of the
DINOv3 detector, whose repository ships its inference code only), with the DINOv3 detection
defaults (``dinov3/eval/detection/config.py``: ``k_one2many=6``, ``lambda_one2many=1``,
``reparam=True``) and Plain-DETR's coefficients (costs: class 2, box 1, GIoU 2; losses: class
2, box 1, GIoU 2; focal alpha 0.25, gamma 2): plain torch and scipy, no mmdet, no dino_mm.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment

from dino_mm.models.detection.plain_detr import PlainDETR, PlainDETRCriterion
from dino_mm.models.detection.plain_detr.box_ops import box_to_delta, delta_to_cxcywh

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


# ----------------------------------------------------------------------------- reference
def _xyxy(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _giou(a, b):
    """Pairwise generalised IoU of (N, 4) and (M, 4) xyxy boxes (no epsilon)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull


def _delta(ref, gt):
    px, py, pw, ph = ref.unbind(-1)
    gx, gy, gw, gh = gt.unbind(-1)
    return torch.stack([(gx - px) / (pw + 0.1), (gy - py) / (ph + 0.1),
                        torch.log(gw / (pw + 0.1)), torch.log(gh / (ph + 0.1))], -1)


def _match(out, targets):
    prob = out['pred_logits'].sigmoid()
    result = []
    for i, t in enumerate(targets):
        if len(t['labels']) == 0:
            result.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
            continue
        p = prob[i]
        neg = 0.75 * p ** 2 * -(1 - p + 1e-8).log()
        pos = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log()
        cost_class = pos[:, t['labels']] - neg[:, t['labels']]
        target_deltas = _delta(out['pred_boxes_old'][i][:, None], t['boxes'][None])
        cost_bbox = (out['pred_deltas'][i][:, None] - target_deltas).abs().sum(-1)
        cost_giou = -_giou(_xyxy(out['pred_boxes'][i]), _xyxy(t['boxes']))
        cost = 1.0 * cost_bbox + 2.0 * cost_class + 2.0 * cost_giou
        rows, cols = linear_sum_assignment(cost.detach().numpy())
        result.append((torch.as_tensor(rows, dtype=torch.long),
                       torch.as_tensor(cols, dtype=torch.long)))
    return result


def _layer_loss(out, targets, num_boxes):
    indices = _match(out, targets)
    logits = out['pred_logits']
    b, q, k = logits.shape
    onehot = torch.zeros(b, q, k)
    src_boxes, tgt_boxes, src_deltas, refs = [], [], [], []
    for i, ((rows, cols), t) in enumerate(zip(indices, targets)):
        onehot[i, rows, t['labels'][cols]] = 1.0
        src_boxes.append(out['pred_boxes'][i][rows])
        src_deltas.append(out['pred_deltas'][i][rows])
        refs.append(out['pred_boxes_old'][i][rows])
        tgt_boxes.append(t['boxes'][cols])
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction='none')
    p_t = p * onehot + (1 - p) * (1 - onehot)
    focal = (0.25 * onehot + 0.75 * (1 - onehot)) * ce * (1 - p_t) ** 2
    loss_ce = focal.mean(1).sum() / num_boxes * q
    src_boxes, tgt_boxes = torch.cat(src_boxes), torch.cat(tgt_boxes)
    loss_bbox = (torch.cat(src_deltas) - _delta(torch.cat(refs), tgt_boxes)).abs().sum()
    loss_giou = (1 - torch.diag(_giou(_xyxy(src_boxes), _xyxy(tgt_boxes)))).sum()
    return dict(loss_ce=loss_ce, loss_bbox=loss_bbox / num_boxes, loss_giou=loss_giou / num_boxes)


def _set_loss(outputs, targets, with_enc):
    num_boxes = max(float(sum(len(t['labels']) for t in targets)), 1.0)
    losses = dict(_layer_loss(outputs, targets, num_boxes))
    for i, aux in enumerate(outputs['aux_outputs']):
        losses.update({f'{k}_{i}': v for k, v in _layer_loss(aux, targets, num_boxes).items()})
    if with_enc:
        binary = [dict(t, labels=torch.zeros_like(t['labels'])) for t in targets]
        losses.update({f'{k}_enc': v for k, v in
                       _layer_loss(outputs['enc_outputs'], binary, num_boxes).items()})
    return losses


def official_hybrid_loss(outputs, targets, k_one2many=6, lambda_one2many=1.0):
    """Weighted loss terms, keyed like the official loss dict."""
    losses = _set_loss(outputs, targets, with_enc=True)
    many = [dict(labels=t['labels'].repeat(k_one2many), boxes=t['boxes'].repeat(k_one2many, 1))
            for t in targets]
    for key, value in _set_loss(outputs['one2many'], many, with_enc=False).items():
        losses[key + '_one2many'] = value * lambda_one2many
    weights = dict(loss_ce=2.0, loss_bbox=1.0, loss_giou=2.0)
    return {k: v * weights[k.split('_')[0] + '_' + k.split('_')[1]] for k, v in losses.items()}


def _official_name(name: str) -> str:
    """dino_mm loss name -> official loss-dict name."""
    many = name.startswith('o2m.')
    name = name[4:] if many else name
    suffix = ''
    if name.startswith('enc_'):
        name, suffix = name[4:], '_enc'
    elif name.startswith('d'):
        layer, name = name.split('.', 1)
        suffix = '_' + layer[1:]
    base = dict(loss_cls='loss_ce', loss_bbox='loss_bbox', loss_iou='loss_giou')[name]
    return base + suffix + ('_one2many' if many else '')


# ----------------------------------------------------------------------------- fixtures
def _random_outputs(b=2, n1=6, n2=12, k=5, layers=3, size=(80, 100), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size

    def level(q):
        ref = torch.cat([torch.rand(b, q, 2, generator=g) * torch.tensor([w, h]),
                         5 + torch.rand(b, q, 2, generator=g) * 40], -1)
        deltas = 0.3 * torch.randn(b, q, 4, generator=g)
        max_shape = (torch.full((b, 1, 1), float(h)), torch.full((b, 1, 1), float(w)))
        return dict(pred_logits=torch.randn(b, q, k, generator=g), pred_boxes_old=ref,
                    pred_deltas=deltas, pred_boxes=delta_to_cxcywh(ref, deltas, max_shape))

    def group(q):
        out = level(q)
        out['aux_outputs'] = [level(q) for _ in range(layers - 1)]
        return out

    outputs = group(n1)
    outputs['enc_outputs'] = level(30)
    outputs['one2many'] = group(n2)
    return outputs


def _targets():
    boxes = [torch.tensor([[10., 12., 50., 42.], [55., 30., 95., 78.], [20., 40., 40., 60.]]),
             torch.tensor([[5., 5., 60., 70.]])]
    labels = [torch.tensor([1, 3, 1]), torch.tensor([4])]
    return boxes, labels  # xyxy pixels


@pytest.mark.parametrize('k_one2many,lam', [(6, 1.0), (2, 0.5)])
def test_criterion_equals_the_official_formulas(k_one2many, lam):
    outputs = _random_outputs()
    boxes, labels = _targets()
    mine = PlainDETRCriterion(k_one2many=k_one2many, lambda_one2many=lam)(
        outputs, [InstanceData(bboxes=b, labels=lb) for b, lb in zip(boxes, labels)],
        [dict(img_shape=(80, 100))] * 2)
    ref = official_hybrid_loss(
        outputs, [dict(labels=lb, boxes=torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1))
                  for b, lb in zip(boxes, labels)], k_one2many, lam)
    assert {_official_name(k) for k in mine} == set(ref)
    assert len(mine) == 3 * (1 + 2 + 1) + 3 * (1 + 2)  # last + aux + enc; one2many: last + aux
    for key, value in mine.items():
        torch.testing.assert_close(value, ref[_official_name(key)], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f'{key}: {m}')


def test_criterion_handles_an_image_without_boxes():
    outputs = _random_outputs()
    boxes, labels = _targets()
    targets = [InstanceData(bboxes=boxes[0], labels=labels[0]),
               InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]
    mine = PlainDETRCriterion()(outputs, targets, [dict(img_shape=(80, 100))] * 2)
    ref = official_hybrid_loss(
        outputs, [dict(labels=t.labels, boxes=torch.cat(
            [(t.bboxes[:, :2] + t.bboxes[:, 2:]) / 2, t.bboxes[:, 2:] - t.bboxes[:, :2]], 1))
            for t in targets])
    for key, value in mine.items():
        torch.testing.assert_close(value, ref[_official_name(key)], rtol=1e-5, atol=1e-6)


def test_box_to_delta_is_the_official_encoder():
    ref = torch.tensor([[50., 40., 20., 10.], [10., 10., 4., 8.]])
    gt = torch.tensor([[55., 38., 30., 5.], [12., 9., 4., 16.]])
    torch.testing.assert_close(box_to_delta(ref, gt), _delta(ref, gt))
    # decoding against the reference grown by the encoder's 0.1 pixel gives the target back
    grown = ref + torch.tensor([0., 0., 0.1, 0.1])
    torch.testing.assert_close(delta_to_cxcywh(grown, box_to_delta(ref, gt)), gt)


# ----------------------------------------------------------------------------- the model
def _tiny(**kw) -> PlainDETR:
    torch.manual_seed(0)
    return PlainDETR(
        backbone=dict(type='DinoVisionTransformer', arch='dinov3_vit7b16', embed_dim=64,
                      depth=4, num_heads=4),
        hidden_dim=64, nheads=8, dim_feedforward=128, num_encoder_layers=1,
        num_decoder_layers=2, num_queries_one2one=10, num_queries_one2many=30,
        rpe_hidden_dim=32, topk=50, category_ids=[1, 2], **kw)


def _batch(model, real_images):
    from mmdet.structures import DetDataSample
    from PIL import Image
    images, samples = [], []
    for name, box in (('astronaut', [20., 10., 90., 80.]), ('coffee', [30., 20., 110., 90.])):
        img = torch.from_numpy(np.array(Image.fromarray(real_images[name]).resize((128, 96))))
        images.append(img.permute(2, 0, 1).contiguous())
        s = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128),
                                        pad_shape=(96, 128), scale_factor=(1., 1.)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([box]), labels=torch.tensor([1]))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    return data['inputs'], data['data_samples']


def test_training_steps_train_the_head_not_the_vit(real_images):
    model = _tiny().train()
    vit = model.get_submodule(model.vit_prefix[:-1])
    assert not vit.training and not any(p.requires_grad for p in vit.parameters())
    inputs, samples = _batch(model, real_images)
    vit_before = {k: v.clone() for k, v in vit.state_dict().items()}
    head_before = model.query_embed.weight.detach().clone()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(6):
        losses = model.loss(inputs, samples)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optim.zero_grad()
        total.backward()
        if not totals:  # every query group and the proposal heads get gradients
            grad = model.query_embed.weight.grad
            assert grad[:10].abs().sum() > 0 and grad[10:].abs().sum() > 0
            last = model.transformer.decoder.num_layers
            assert model.class_embed[last].weight.grad.abs().sum() > 0
        optim.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0], totals
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in vit_before.items())
    assert not torch.equal(head_before, model.query_embed.weight)
    # the mmdet label i is trained as category id category_ids[i]
    assert model.label_to_category.tolist() == [1, 2]


def test_label_outside_the_category_table_is_named(real_images):
    model = _tiny().train()
    inputs, samples = _batch(model, real_images)
    samples[0].gt_instances.labels = torch.tensor([5])
    with pytest.raises(ValueError, match='ground-truth label 5'):
        model.loss(inputs, samples)


def test_too_many_queries_for_the_image_is_a_clear_error(real_images):
    model = PlainDETR(
        backbone=dict(type='DinoVisionTransformer', arch='dinov3_vit7b16', embed_dim=64,
                      depth=4, num_heads=4),
        hidden_dim=64, num_encoder_layers=1, num_decoder_layers=1, num_queries_one2one=10,
        num_queries_one2many=1000, rpe_hidden_dim=16, category_ids=[1, 2]).train()
    inputs, samples = _batch(model, real_images)
    with pytest.raises(ValueError, match='proposals'):
        model.loss(inputs, samples)


def test_train_then_test_through_the_tools(tmp_path, real_images):
    """``tools/train.py`` on the shipped Plain-DETR training config (tiny ViT and head, tiny
    COCO-layout set, 2 iterations), then ``tools/test.py`` with its checkpoint: COCO box AP
    and the ``--show-dir`` pictures."""
    from tests.detection.test_detection import _write_tiny_coco
    coco = str(tmp_path / 'coco') + '/'
    _write_tiny_coco(coco, real_images)
    vit_file = str(tmp_path / 'vit.pth')
    torch.manual_seed(0)
    from dino_mm.models.backbones import DinoVisionTransformer
    vit = DinoVisionTransformer(arch='dinov3_vit7b16', embed_dim=64, depth=4, num_heads=4)
    torch.save(vit.state_dict(), vit_file)
    small = [(96, 128), (112, 150)]
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                dict(type='RandomFlip', prob=0.5),
                dict(type='RandomChoiceResize', scales=small, keep_ratio=True),
                dict(type='PackDetInputs')]
    test_pipeline = [dict(type='LoadImageFromFile'),
                     dict(type='Resize', scale=(128, 96), keep_ratio=True),
                     dict(type='LoadAnnotations', with_bbox=True),
                     dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                           'img_shape', 'scale_factor'))]
    data = (f"data_root={coco!r}, metainfo=dict(classes=('circle', 'square'))")
    cfg = tmp_path / 'tiny_plain_detr_train.py'
    cfg.write_text('\n'.join([
        "_base_ = [" + repr(osp.join(
            ROOT, 'configs/detection/plain-detr_dinov3-vit7b16-frozen_8xb2-12e_coco.py')) + "]",
        f'model = dict(backbone=dict(embed_dim=64, depth=4, num_heads=4, '
        f'init_cfg=dict(checkpoint={vit_file!r})), hidden_dim=64, dim_feedforward=128, '
        'num_encoder_layers=1, num_decoder_layers=2, num_queries_one2one=10, '
        'num_queries_one2many=20, rpe_hidden_dim=32, topk=10 * 91, category_ids=[1, 2])',
        f'train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict('
        f'{data}, pipeline={pipeline!r}))',
        f'val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict('
        f'{data}, pipeline={test_pipeline!r}))',
        'test_dataloader = val_dataloader',
        f"val_evaluator = dict(ann_file={coco + 'annotations/instances_val2017.json'!r})",
        'test_evaluator = val_evaluator',
        'train_cfg = dict(max_epochs=1)',
        'default_hooks = dict(logger=dict(interval=1))',
    ]) + '\n')
    wd = str(tmp_path / 'wd')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, 'tools/train.py', str(cfg), '--work-dir', wd],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    assert 'o2m.loss_cls' in log and 'enc_loss_iou' in log, log[-3000:]
    ckpt = osp.join(wd, 'epoch_1.pth')
    assert osp.isfile(ckpt)
    show, out = str(tmp_path / 'show'), str(tmp_path / 'metrics.json')
    p = subprocess.run([sys.executable, 'tools/test.py', str(cfg), ckpt, '--work-dir', wd,
                        '--show-dir', show, '--out', out], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
    metrics = json.load(open(out))
    assert 0.0 <= metrics.get('coco/bbox_mAP', -1) <= 1.0, (metrics, p.stdout[-3000:])
    pictures = [f for _, _, fs in os.walk(show) for f in fs if f.endswith(('.jpg', '.png'))]
    assert len(pictures) == 4
