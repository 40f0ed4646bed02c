"""Hub depthers: official layer selection, head layout, local head checkpoints, offline errors."""
import pytest
import torch

from dino_mm.hub import depthers


def test_out_index_table():
    assert depthers.depther_out_index('s') == [2, 5, 8, 11]
    assert depthers.depther_out_index('l') == [4, 11, 17, 23]
    assert depthers.depther_out_index('g') == [9, 19, 29, 39]
    assert depthers.depther_out_index('g', layers=1) == [39]


def test_vits14_ld_real_size_and_local_head(tmp_path):
    model = depthers.dinov2_vits14_ld(layers=4, pretrained=False)
    head = model.decode_head
    assert list(model.backbone.out_indices) == [2, 5, 8, 11]
    assert head.conv_depth.weight.shape == (256, 384 * 4 * 2, 1, 1)
    assert (head.min_depth, head.max_depth) == (1e-3, 80.0)  # official bins quirk
    x = torch.randn(1, 3, 30, 44)  # padded to 42 x 56 inside
    out = model.estimate_depth(x)
    assert out.shape == (1, 1, 30, 44) and out.min() >= 1e-3
    # an official-style head file {'state_dict': {'decode_head.conv_depth.*'}} loads
    sd = {f'decode_head.{k}': torch.randn_like(v) for k, v in head.state_dict().items()}
    torch.save({'state_dict': sd}, tmp_path / 'head.pth')
    loaded = depthers.dinov2_vits14_ld(layers=4, pretrained=False,
                                       weights=str(tmp_path / 'head.pth'))
    assert torch.equal(loaded.decode_head.conv_depth.weight, sd['decode_head.conv_depth.weight'])
    # smaller widths below keep the test fast; the layer selection is the official one
    one = depthers.dinov2_vits14_ld(layers=1, pretrained=False, embed_dim=32, num_heads=2)
    assert list(one.backbone.out_indices) == [11]
    assert one.decode_head.conv_depth.weight.shape == (256, 64, 1, 1)
    with pytest.raises(RuntimeError, match='does not match'):
        depthers.dinov2_vits14_ld(layers=4, embed_dim=32, num_heads=2, pretrained=False,
                                  weights=str(tmp_path / 'head.pth'))


def test_vits14_dd_layout():
    model = depthers.dinov2_vits14_dd(pretrained=False, weights='KITTI', embed_dim=64,
                                     num_heads=2)
    h = model.decode_head
    assert h.max_depth == 10.0  # not pretrained -> NYU range, as the official default
    assert list(model.backbone.out_indices) == [2, 5, 8, 11]
    assert h.post_process_channels == [8, 16, 32, 64] and h.channels == 256  # [D/8..D]
    assert h.readout_type == 'project'
    assert model.estimate_depth(torch.randn(1, 3, 28, 28)).shape == (1, 1, 28, 28)
    ranged = depthers.dinov2_vits14_dd(pretrained=False, depth_range=(0.1, 80.0), embed_dim=32,
                                      num_heads=2)
    assert (ranged.decode_head.min_depth, ranged.decode_head.max_depth) == (0.1, 80.0)


def test_offline_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path))
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(FileNotFoundError, match='dinov2_vitg14_pretrain.pth'):
        depthers.dinov2_vitg14_ld(pretrained=True)
    torch.save({}, tmp_path / 'dinov2_vitb14_pretrain.pth')
    with pytest.raises(FileNotFoundError, match='dinov2_vitb14_kitti_dpt_head.pth'):
        depthers.dinov2_vitb14_dd(pretrained=True, weights='KITTI')
    with pytest.raises(FileNotFoundError, match='dinov3_vit7b16_pretrain_lvd1689m'):
        depthers.dinov3_vit7b16_dd(pretrained=True)
    with pytest.raises(ValueError, match='offline'):
        depthers.dinov2_vits14_ld(weights='https://dl.fbaipublicfiles.com/x.pth')
