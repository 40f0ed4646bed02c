"""dino_mm backbones inside mmseg / mmdet / mmpretrain models, built from config dicts.

Each model is built only from a config (``type='dino_mm.X'`` inside ``mmseg.X`` /
``mmdet.X`` / ``mmpretrain.X``), then runs a forward pass and a training loss with a
backward pass that reaches the backbone.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.oracles import require

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
VIT = dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', embed_dim=32, depth=2,
           num_heads=2, img_size=56)
VIT3 = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', embed_dim=32, depth=2,
            num_heads=2)
CNX = dict(type='dino_mm.DinoConvNeXt', depths=[1, 1, 1, 1], dims=[16, 24, 32, 40])


def _batch(real_images, size):
    """Two real photographs as uint8-range float NCHW tensors of ``size``."""
    imgs = []
    for name in ('astronaut', 'coffee'):
        img = torch.from_numpy(np.ascontiguousarray(real_images[name])).permute(2, 0, 1)
        imgs.append(F.interpolate(img[None].float(), size=size, mode='bilinear',
                                  antialias=True)[0])
    return imgs


def _backbone_grads(model):
    grads = [p.grad for n, p in model.named_parameters() if n.startswith('backbone.')]
    return [g for g in grads if g is not None]


@pytest.mark.parametrize('backbone,channels', [
    (dict(VIT, out_type='featmap', out_indices=[0, 1]), [32, 32]),
    (dict(VIT3, out_type='featmap', out_indices=[-1]), [32]),
    (dict(CNX, out_indices=[1, 2, 3]), [24, 32, 40]),
])
def test_mmseg_encoder_decoder(real_images, backbone, channels):
    require('mmseg.models')
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    import dino_mm  # noqa: F401  (registers the dino_mm registries)
    from mmengine.registry import MODELS
    cfg = dict(
        type='mmseg.EncoderDecoder',
        data_preprocessor=dict(type='mmseg.SegDataPreProcessor', mean=MEAN, std=STD,
                               bgr_to_rgb=False, size=(64, 64) if 'arch' in backbone and
                               backbone['arch'].startswith('dinov3') else (56, 56)),
        backbone=backbone,
        decode_head=dict(type='mmseg.FCNHead', in_channels=channels,
                         in_index=list(range(len(channels))), channels=16, num_convs=1,
                         concat_input=False, input_transform='resize_concat',
                         num_classes=4, norm_cfg=dict(type='BN'), align_corners=False,
                         loss_decode=dict(type='mmseg.CrossEntropyLoss', loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    if len(channels) == 1:
        cfg['decode_head'].update(in_channels=channels[0], in_index=0, input_transform=None)
    model = MODELS.build(cfg)
    size = cfg['data_preprocessor']['size']
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, *size)))
        s.set_metainfo(dict(img_shape=size, ori_shape=size, pad_shape=size))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=_batch(real_images, size),
                                        data_samples=samples), training=True)
    model.train()
    logits = model(data['inputs'], data['data_samples'], mode='tensor')
    assert logits.shape[:2] == (2, 4) and torch.isfinite(logits).all()
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    assert torch.isfinite(loss) and _backbone_grads(model)


@pytest.mark.parametrize('backbone,channels', [
    (dict(CNX, out_indices=[1, 2, 3]), [24, 32, 40]),
    (dict(VIT, out_type='featmap', out_indices=[1]), [32]),
])
def test_mmdet_retinanet(real_images, backbone, channels):
    require('mmdet.models')
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from mmengine.config import Config

    from dino_mm.registry import MODELS
    n_levels = 3
    cfg = dict(
        type='mmdet.RetinaNet',
        data_preprocessor=dict(type='mmdet.DetDataPreprocessor', mean=MEAN, std=STD,
                               bgr_to_rgb=False, pad_size_divisor=1),
        backbone=backbone,
        neck=dict(type='mmdet.FPN', in_channels=channels, out_channels=16, start_level=0,
                  add_extra_convs='on_output', num_outs=n_levels),
        bbox_head=dict(
            type='mmdet.RetinaHead', num_classes=3, in_channels=16, stacked_convs=1,
            feat_channels=16,
            anchor_generator=dict(type='mmdet.AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0],
                                  strides=[8, 16, 32][:n_levels]),
            bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                            target_stds=[1.0] * 4),
            loss_cls=dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=1.0),
            loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type='mmdet.MaxIoUAssigner', pos_iou_thr=0.5,
                                     neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
                       sampler=dict(type='mmdet.PseudoSampler'), allowed_border=-1,
                       pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=50, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=5))
    # mmdet heads read train/test cfgs by attribute, as a config file would give them.
    model = MODELS.build(Config(dict(model=cfg)).model)
    size = (56, 56) if backbone['type'].endswith('Transformer') else (64, 64)
    samples = []
    for _ in range(2):
        s = DetDataSample()
        s.gt_instances = InstanceData(bboxes=torch.tensor([[4.0, 6.0, 30.0, 40.0]]),
                                      labels=torch.tensor([1]))
        s.set_metainfo(dict(img_shape=size, ori_shape=size, pad_shape=size,
                            scale_factor=(1.0, 1.0), batch_input_shape=size))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=_batch(real_images, size),
                                        data_samples=samples), training=True)
    model.train()
    cls_scores, bbox_preds = model(data['inputs'], data['data_samples'], mode='tensor')
    assert len(cls_scores) == n_levels and cls_scores[0].shape[0] == 2
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    loss = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    assert torch.isfinite(loss) and _backbone_grads(model)
    model.eval()
    with torch.no_grad():
        preds = model(data['inputs'], data['data_samples'], mode='predict')
    assert len(preds) == 2 and preds[0].pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize('backbone,channels', [
    (dict(VIT, out_type='cls', out_indices=[-1]), 32),
    (dict(CNX, out_type='cls', out_indices=[3]), 40),
])
def test_mmpretrain_image_classifier(real_images, backbone, channels):
    require('mmpretrain.models')
    from mmpretrain.structures import DataSample

    from dino_mm.registry import MODELS
    cfg = dict(type='mmpretrain.ImageClassifier',
               data_preprocessor=dict(type='mmpretrain.ClsDataPreprocessor', mean=MEAN,
                                      std=STD, to_rgb=False),
               backbone=backbone,
               head=dict(type='mmpretrain.LinearClsHead', num_classes=5, in_channels=channels,
                         loss=dict(type='mmpretrain.CrossEntropyLoss', loss_weight=1.0)))
    model = MODELS.build(cfg)
    size = (56, 56)
    samples = [DataSample().set_gt_label(i) for i in (1, 3)]
    data = model.data_preprocessor(dict(inputs=_batch(real_images, size),
                                        data_samples=samples), training=True)
    logits = model(data['inputs'], mode='tensor')
    assert logits.shape == (2, 5)
    losses = model(data['inputs'], data['data_samples'], mode='loss')
    losses['loss'].backward()
    assert torch.isfinite(losses['loss']) and _backbone_grads(model)
    preds = model(data['inputs'], data['data_samples'], mode='predict')
    assert preds[0].pred_score.shape == (5,)
