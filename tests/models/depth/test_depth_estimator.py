"""DinoDepthEstimator: official center padding + backbone call, clamping, working slide and
flip inference, frozen backbone, depth padding value."""
import pytest
import torch
import torch.nn.functional as F
from mmseg.structures import SegDataSample
from mmengine.structures import PixelData

from dino_mm.models.depth import DinoDepthEstimator, DepthDataPreProcessor
from dino_mm.models.segmentation.center_padding import center_pad_amounts as center_padding
from dino_mm.registry import MODELS

DIM = 32


def _model(test_cfg=None, **kw):
    cfg = dict(
        type='dino_mm.DinoDepthEstimator',
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', depth=2,
                      embed_dim=DIM, num_heads=2, out_indices=[0, 1], out_type='cls_featmap',
                      norm_out=False),
        decode_head=dict(type='dino_mm.LinearDepthHead', in_channels=[2 * DIM] * 2,
                         in_index=[0, 1], max_depth=10.0),
        test_cfg=test_cfg, **kw)
    model = MODELS.build(cfg)
    torch.nn.init.normal_(model.decode_head.conv_depth.weight, std=0.2)
    return model.eval()


def test_center_padding_split():
    assert center_padding(28, 14) == (0, 0)
    assert center_padding(100, 14) == (6, 6)   # 112 - 100 = 12
    assert center_padding(101, 14) == (5, 6)   # floor half first (left/top)
    assert center_padding(29, 14) == (6, 7)


def test_encode_decode_equals_official_pipeline():
    model = _model()
    x = torch.randn(2, 3, 45, 61)
    # official: pad 45->56 (5, 6), 61->70 (4, 5); get_intermediate_layers(norm=False, cls)
    xp = F.pad(x, (4, 5, 5, 6))
    feats = model.backbone.get_intermediate_layers(xp, n=[0, 1], reshape=True,
                                                   return_class_token=True, norm=False)
    ref = model.decode_head(feats).clamp(1e-3, 10.0)
    ref = F.interpolate(ref, size=(45, 61), mode='bilinear', align_corners=False)
    out = model.encode_decode(x)
    assert out.shape == (2, 1, 45, 61)
    assert torch.allclose(out, ref, atol=1e-6)


def test_slide_and_flip_inference():
    x = torch.randn(1, 3, 42, 70)
    metas = [dict(ori_shape=(42, 70), img_shape=(42, 70), pad_shape=(42, 70))]
    whole = _model()
    slide = _model(test_cfg=dict(mode='slide', crop_size=(42, 42), stride=(28, 28)))
    slide.load_state_dict(whole.state_dict())
    out = slide.inference(x, metas)
    # two windows: cols 0:42 and 28:70, averaged on the overlap
    a, b = whole.encode_decode(x[..., :42]), whole.encode_decode(x[..., 28:])
    ref = torch.zeros(1, 1, 42, 70)
    cnt = torch.zeros(1, 1, 42, 70)
    ref[..., :42] += a
    ref[..., 28:] += b
    cnt[..., :42] += 1
    cnt[..., 28:] += 1
    assert torch.allclose(out, ref / cnt, atol=1e-6)
    assert not torch.allclose(out, whole.inference(x, metas), atol=1e-4)  # really slides

    flip = _model(test_cfg=dict(mode='whole', flip=True))
    flip.load_state_dict(whole.state_dict())
    ref = (whole.encode_decode(x) + whole.encode_decode(x.flip(3)).flip(3)) / 2
    assert torch.allclose(flip.inference(x, metas), ref, atol=1e-6)


def test_frozen_backbone_and_loss():
    model = _model().train()
    assert not model.backbone.training and model.decode_head.training
    x = torch.randn(2, 3, 28, 28)
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_depth_map = PixelData(data=torch.rand(1, 28, 28) * 5 + 0.5)
        s.set_metainfo(dict(img_shape=(28, 28), ori_shape=(28, 28), pad_shape=(28, 28)))
        samples.append(s)
    losses = model.loss(x, samples)
    assert set(losses) == {'decode.loss_sig'} and losses['decode.loss_sig'] > 0
    losses['decode.loss_sig'].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.decode_head.conv_depth.weight.grad.abs().sum() > 0


def test_bad_configs():
    with pytest.raises(ValueError, match='seg_pad_val'):
        DepthDataPreProcessor(seg_pad_val=255)
    with pytest.raises(KeyError, match='crop_size'):
        _model(test_cfg=dict(mode='slide'))
    with pytest.raises(ValueError, match='mode'):
        _model(test_cfg=dict(mode='tta'))


@pytest.mark.parametrize('leaf', ['dinov3-vits16_linear4_8xb2-38k_nyu.py',
                                  'dinov3-vits16_dpt_8xb2-38k_kitti.py'])
def test_dinov3_leaf_configs_build_and_run(leaf):
    """DINOv3 protocol (backbone norm, no class token, BatchNorm, bins) builds from its leaf."""
    import os.path as osp
    from mmengine.config import Config
    root = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    cfg = Config.fromfile(osp.join(root, 'configs/depth', leaf)).model
    cfg.backbone.update(depth=2, embed_dim=DIM, num_heads=2, out_indices=[0, 1, 1, 1])
    head = cfg.decode_head
    head.norm_cfg = dict(type='BN')  # SyncBN needs a process group
    if 'dpt' in leaf:
        head.update(embed_dims=DIM, post_process_channels=[DIM] * 4, channels=16)
    else:
        head.update(in_channels=[DIM] * 4)
    model = MODELS.build(cfg).eval()
    out = model.estimate_depth(torch.randn(1, 3, 40, 56))
    assert out.shape == (1, 1, 40, 56)
    assert out.min() >= head.min_depth and out.max() <= head.max_depth
