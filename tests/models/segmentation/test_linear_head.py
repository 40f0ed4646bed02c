"""DinoLinearHead / DinoEncoderDecoder vs an independent computation of the official head.

Reference (official DINOv2 BNHead, mmseg-0.x): center-pad the normalised image to a
multiple of the patch, take normalised patch maps of the chosen blocks (and class
tokens broadcast), resize each to the first map's size (bilinear, align_corners=False),
concatenate, BatchNorm in eval mode, 1x1 conv, resize logits to the unpadded input.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.oracles import require

require('mmseg.models')

from dino_mm.models.segmentation import DinoLinearHead  # noqa: E402
from dino_mm.registry import MODELS  # noqa: E402

DIM = 32


def _randomise_bn(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)


def _reference_head(maps, bn, conv):
    size = maps[0].shape[2:]
    x = torch.cat([F.interpolate(m, size=size, mode='bilinear', align_corners=False)
                   for m in maps], dim=1)
    x = (x - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps)
    x = x * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return F.conv2d(x, conv.weight, conv.bias)


def _head(in_channels, num_classes=5, **kw):
    head = DinoLinearHead(in_channels=in_channels, channels=sum(in_channels),
                          in_index=list(range(len(in_channels))),
                          input_transform='resize_concat', num_classes=num_classes,
                          dropout_ratio=0.0, norm_cfg=dict(type='SyncBN'), **kw)
    _randomise_bn(head.bn)
    torch.nn.init.normal_(head.conv_seg.weight)
    return head.eval()


def test_official_key_names():
    keys = set(_head([DIM]).state_dict())
    assert {'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
            'bn.num_batches_tracked', 'conv_seg.weight', 'conv_seg.bias'} == keys


def test_head_matches_reference_multi_layer_and_sizes():
    head = _head([DIM, DIM, DIM])
    maps = (torch.randn(2, DIM, 6, 7), torch.randn(2, DIM, 3, 4), torch.randn(2, DIM, 6, 7))
    out = head(maps)
    ref = _reference_head(list(maps), head.bn, head.conv_seg)
    err = (out - ref).abs().max().item()
    assert out.shape == (2, 5, 6, 7) and err < 1e-5, err


def test_class_token_is_broadcast_like_the_official_head():
    head = _head([DIM, DIM])  # one layer = (map, cls) pair -> two inputs
    fmap, cls = torch.randn(2, DIM, 5, 4), torch.randn(2, DIM)
    out = head(((fmap, cls), ))
    ref = _reference_head([fmap, cls[:, :, None, None].expand(-1, -1, 5, 4)],
                          head.bn, head.conv_seg)
    assert (out - ref).abs().max().item() < 1e-5


def test_channels_mismatch_and_bad_index_are_clear():
    with pytest.raises(ValueError, match='channels'):
        DinoLinearHead(in_channels=[DIM], channels=DIM + 1, in_index=[0],
                       input_transform='resize_concat', num_classes=3)
    head = _head([DIM, DIM])
    with pytest.raises(IndexError, match='out_indices'):
        head((torch.randn(1, DIM, 2, 2), ))


def _segmentor(out_indices, test_cfg, arch='dinov2_vits14', num_classes=4):
    cfg = dict(
        type='dino_mm.DinoEncoderDecoder',
        freeze_backbone=True,
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch=arch, depth=3,
                      embed_dim=DIM, num_heads=2, img_size=56, out_indices=out_indices,
                      out_type='featmap'),
        decode_head=dict(type='dino_mm.DinoLinearHead', in_channels=[DIM] * len(out_indices),
                         in_index=list(range(len(out_indices))),
                         input_transform='resize_concat', channels=DIM * len(out_indices),
                         dropout_ratio=0.0, num_classes=num_classes,
                         norm_cfg=dict(type='SyncBN')),
        test_cfg=test_cfg)
    model = MODELS.build(cfg)
    model.backbone.init_weights()
    with torch.no_grad():
        # LayerScale / norms away from their init so a wrong layer choice shows.
        for name, p in model.backbone.named_parameters():
            if name.endswith('gamma') or name.startswith('norm.'):
                p.uniform_(0.5, 1.5)
    _randomise_bn(model.decode_head.bn)
    torch.nn.init.normal_(model.decode_head.conv_seg.weight)
    return model.eval()


def _image(real_images, hw=(47, 61)):
    from PIL import Image
    img = np.asarray(Image.fromarray(real_images['astronaut']).resize((hw[1], hw[0])))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    return (x - mean) / std


def _reference_logits(model, x, indices):
    p = model.backbone.patch_size
    h, w = x.shape[2:]
    ph, pw = math.ceil(h / p) * p - h, math.ceil(w / p) * p - w
    padded = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    maps = model.backbone.get_intermediate_layers(padded, n=indices, reshape=True, norm=True)
    logits = _reference_head(list(maps), model.decode_head.bn, model.decode_head.conv_seg)
    return F.interpolate(logits, size=(h, w), mode='bilinear', align_corners=False)


@pytest.mark.parametrize('arch,indices', [('dinov2_vits14', [2]),
                                          ('dinov2_vits14', [0, 1, 2]),
                                          ('dinov3_vits16', [2])])
def test_segmentor_whole_matches_reference(real_images, arch, indices):
    model = _segmentor(indices, dict(mode='whole'), arch=arch)
    x = _image(real_images)
    meta = dict(ori_shape=x.shape[2:], img_shape=x.shape[2:], pad_shape=x.shape[2:],
                padding_size=[0, 0, 0, 0])
    with torch.no_grad():
        out = model.inference(x, [meta])
        ref = _reference_logits(model, x, indices)
    err = (out - ref).abs().max().item()
    assert out.shape == (1, 4, 47, 61) and err < 1e-4, err


def test_multiscale_flip_tta_averages_probabilities(real_images):
    indices = [1, 2]
    model = _segmentor(indices, dict(mode='whole', img_ratios=[1.0, 1.5], flip=True))
    x = _image(real_images, (42, 56))
    meta = dict(ori_shape=(42, 56), img_shape=(42, 56), pad_shape=(42, 56))
    with torch.no_grad():
        out = model.inference(x, [meta])
        views = []
        for r in (1.0, 1.5):
            xs = x if r == 1.0 else F.interpolate(x, size=(63, 84), mode='bilinear',
                                                  align_corners=False)
            for flip in (False, True):
                v = _reference_logits(model, xs.flip(-1) if flip else xs, indices)
                v = v.flip(-1) if flip else v
                v = F.interpolate(v, size=(42, 56), mode='bilinear', align_corners=False)
                views.append(v.softmax(1))
        ref = torch.stack(views).mean(0)
    err = (out - ref).abs().max().item()
    assert err < 1e-5, err


def test_slide_equals_manual_windows(real_images):
    indices = [2]
    model = _segmentor(indices, dict(mode='slide', crop_size=(28, 28), stride=(20, 20)))
    x = _image(real_images, (40, 50))
    meta = dict(ori_shape=(40, 50), img_shape=(40, 50), pad_shape=(40, 50))
    with torch.no_grad():
        out = model.inference(x, [meta])
        acc = torch.zeros(1, 4, 40, 50)
        cnt = torch.zeros(1, 1, 40, 50)
        for y1 in (0, 12):
            for x1 in (0, 20, 22):
                acc[..., y1:y1 + 28, x1:x1 + 28] += _reference_logits(
                    model, x[..., y1:y1 + 28, x1:x1 + 28], indices)
                cnt[..., y1:y1 + 28, x1:x1 + 28] += 1
    assert (out - acc / cnt).abs().max().item() < 1e-4


def test_frozen_backbone_stays_in_eval_and_gets_no_grad(real_images):
    model = _segmentor([2], dict(mode='whole'), arch='dinov3_vits16')
    model.train()
    assert model.decode_head.training and not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    x = _image(real_images, (32, 32))
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 4, (1, 32, 32))))
    sample.set_metainfo(dict(img_shape=(32, 32), pad_shape=(32, 32)))
    losses = model.loss(x, [sample])
    losses['decode.loss_ce'].backward()
    assert model.decode_head.conv_seg.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
