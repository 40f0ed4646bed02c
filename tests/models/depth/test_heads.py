"""Depth heads: the linear-bins head against a hand-written restatement of the official
formula; DPT output shape, key layout and readout behaviour."""
import pytest
import torch
import torch.nn.functional as F

from dino_mm.models.depth import DPTDepthHead, LinearDepthHead


def _pairs(n_layers, dim, h, w, batch=2):
    return [(torch.randn(batch, dim, h, w), torch.randn(batch, dim)) for _ in range(n_layers)]


def _reference_linear(pairs, weight, bias, lo, hi, upsample=4):
    """Official linear depth head: [patch map | broadcast cls] per layer, bilinear x4 of the
    first map size, concat, 1x1 conv to 256 logits, (ReLU + 0.1) normalised, sum p * bin."""
    h, w = pairs[0][0].shape[-2:]
    feats = []
    for fmap, cls in pairs:
        x = torch.cat([fmap, cls[:, :, None, None].expand(-1, -1, *fmap.shape[-2:])], 1)
        feats.append(F.interpolate(x, size=(h * upsample, w * upsample), mode='bilinear',
                                   align_corners=False))
    logits = F.conv2d(torch.cat(feats, 1), weight, bias)
    p = torch.relu(logits) + 0.1
    p = p / p.sum(1, keepdim=True)
    bins = torch.linspace(lo, hi, 256)
    return (p * bins[None, :, None, None]).sum(1, keepdim=True)


@pytest.mark.parametrize('n_layers', [1, 4])
def test_linear_head_matches_official_formula(n_layers):
    dim = 24
    head = LinearDepthHead(in_channels=[2 * dim] * n_layers, in_index=list(range(n_layers)),
                           min_depth=1e-3, max_depth=10.0, loss_decode=[])
    torch.nn.init.normal_(head.conv_depth.weight, std=0.5)
    torch.nn.init.normal_(head.conv_depth.bias, std=0.5)
    pairs = _pairs(n_layers, dim, 3, 5)
    out = head(pairs)
    ref = _reference_linear(pairs, head.conv_depth.weight, head.conv_depth.bias, 1e-3, 10.0)
    assert out.shape == (2, 1, 12, 20)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()
    assert out.min() > 1e-3 and out.max() < 10.0
    # official key and shape: decode_head.conv_depth (256, C, 1, 1), C = D * layers * 2
    assert head.conv_depth.weight.shape == (256, 2 * dim * n_layers, 1, 1)
    assert set(head.state_dict()) == {'conv_depth.weight', 'conv_depth.bias'}


def test_linear_head_hub_bins_quirk_ignores_depth_range():
    dim = 8
    head = LinearDepthHead(in_channels=[2 * dim], in_index=[0], min_depth=0.5, max_depth=10.0,
                           hub_bins_quirk=True, loss_decode=[])
    assert (head.min_depth, head.max_depth) == (1e-3, 80.0)
    pairs = _pairs(1, dim, 2, 2)
    ref = _reference_linear(pairs, head.conv_depth.weight, head.conv_depth.bias, 1e-3, 80.0)
    assert torch.allclose(head(pairs), ref, atol=1e-4)


def test_linear_head_without_cls_and_bad_channels():
    head = LinearDepthHead(in_channels=[16, 16], in_index=[0, 1], norm_cfg=dict(type='BN'),
                           loss_decode=[])
    out = head([torch.randn(2, 16, 3, 3), torch.randn(2, 16, 3, 3)])
    assert out.shape == (2, 1, 12, 12) and 'bn.running_mean' in head.state_dict()
    with pytest.raises(ValueError, match='channels'):
        head([(torch.randn(2, 16, 3, 3), torch.randn(2, 16))] * 2)


@pytest.mark.parametrize('hw,expected', [((4, 6), (64, 96)), ((5, 7), (96, 128))])
def test_dpt_head_shape_and_keys(hw, expected):
    dim = 32
    head = DPTDepthHead(embed_dims=dim, post_process_channels=[dim // 8, dim // 4, dim // 2, dim],
                        channels=16, readout_type='project', max_depth=10.0, loss_decode=[])
    out = head(_pairs(4, dim, *hw))
    assert out.shape == (2, 1, *expected)
    assert out.min() >= 1e-3  # ReLU + min_depth regression
    keys = set(head.state_dict())
    for k in ['reassemble_blocks.readout_projects.0.0.weight',
              'reassemble_blocks.projects.3.conv.weight',
              'reassemble_blocks.resize_layers.0.weight',
              'reassemble_blocks.resize_layers.3.weight',
              'convs.0.conv.weight', 'fusion_blocks.0.res_conv_unit2.conv1.conv.weight',
              'fusion_blocks.3.res_conv_unit1.conv2.conv.weight',
              'fusion_blocks.3.project.conv.bias',
              'project.conv.weight', 'project.conv.bias', 'conv_depth.head.0.weight',
              'conv_depth.head.2.weight', 'conv_depth.head.4.weight']:
        assert k in keys, k
    assert not any(k.startswith('fusion_blocks.0.res_conv_unit1') for k in keys)
    assert head.convs[0].conv.weight.shape == (16, dim // 8, 3, 3)
    assert head.reassemble_blocks.readout_projects[0][0].weight.shape == (dim, 2 * dim)
    assert head.conv_depth.head[4].weight.shape == (1, 32, 1, 1)


def test_dpt_head_official_vits_shapes_and_readout():
    head = DPTDepthHead(embed_dims=384, post_process_channels=[48, 96, 192, 384], channels=256,
                        readout_type='project', loss_decode=[])
    sd = head.state_dict()
    assert sd['reassemble_blocks.projects.0.conv.weight'].shape == (48, 384, 1, 1)
    assert sd['reassemble_blocks.resize_layers.0.weight'].shape == (48, 48, 4, 4)
    assert sd['convs.3.conv.weight'].shape == (256, 384, 3, 3)
    with pytest.raises(ValueError, match='cls_featmap'):
        head([torch.randn(1, 384, 2, 2)] * 4)
    # readout 'ignore' with bins (DINOv3 style) accepts plain maps
    v3 = DPTDepthHead(embed_dims=32, post_process_channels=[32] * 4, channels=16,
                      readout_type='ignore', norm_cfg=dict(type='BN'), classify=True,
                      n_bins=8, loss_decode=[])
    out = v3([torch.randn(2, 32, 4, 4)] * 4)
    assert out.shape == (2, 1, 64, 64) and v3.conv_depth.head[4].out_channels == 8


def test_dpt_output_block_is_the_official_head_depth():
    """Official ``HeadDepth`` (DINOv2) / ``UpConvHead`` (DINOv3): conv3x3 C -> C/2, x2
    bilinear upsampling with align_corners=True, conv3x3 -> 32, ReLU, conv1x1."""
    from dino_mm.models.depth.dpt_head import DepthOutputBlock
    torch.manual_seed(0)
    block = DepthOutputBlock(16, 1).eval()
    x = torch.randn(2, 16, 5, 7)
    c1, _, c2, _, c3 = block.head
    ref = F.conv2d(x, c1.weight, c1.bias, padding=1)
    ref = F.interpolate(ref, scale_factor=2, mode='bilinear', align_corners=True)
    ref = F.conv2d(F.conv2d(ref, c2.weight, c2.bias, padding=1).relu(), c3.weight, c3.bias)
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-6)
