"""Official head checkpoints -> dino_mm keys, the converter tool and the hub entries."""
import importlib.util
import os.path as osp

import pytest
import torch

from tests.oracles import require

require('mmseg.models')

from dino_mm.models.segmentation import (build_segmentor_state_dict,  # noqa: E402
                                         convert_seg_head_state_dict)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
TINY = dict(depth=2, embed_dim=32, num_heads=2, img_size=56)


def _hub():
    from dino_mm.hub import segmentors
    return segmentors


def _official_v2_head(dim, n_cls):
    return {
        'decode_head.bn.weight': torch.rand(dim) + 0.5,
        'decode_head.bn.bias': torch.randn(dim),
        'decode_head.bn.running_mean': torch.randn(dim),
        'decode_head.bn.running_var': torch.rand(dim) + 0.5,
        'decode_head.bn.num_batches_tracked': torch.tensor(7),
        'decode_head.conv_seg.weight': torch.randn(n_cls, dim, 1, 1),
        'decode_head.conv_seg.bias': torch.randn(n_cls),
    }


def test_dinov3_keys_are_renamed():
    sd = {'batchnorm_layer.weight': torch.ones(4), 'batchnorm_layer.running_var': torch.ones(4),
          'head.conv.weight': torch.zeros(3, 4, 1, 1), 'head.conv.bias': torch.zeros(3)}
    out = convert_seg_head_state_dict(sd)
    assert set(out) == {'decode_head.bn.weight', 'decode_head.bn.running_var',
                        'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'}
    with pytest.raises(KeyError, match='not linear segmentation head keys'):
        convert_seg_head_state_dict({'blocks.0.attn.qkv.weight': torch.zeros(1)}, 'x.pth')


def test_hub_loads_official_head_and_backbone_files(tmp_path):
    hub = _hub()
    ref = hub.dinov2_vits14_ade20k_linear(pretrained=False, **TINY)
    head = _official_v2_head(32, 150)
    backbone = {k: torch.randn_like(v) if v.is_floating_point() else v
                for k, v in ref.backbone.state_dict().items()}
    torch.save({'state_dict': head}, tmp_path / 'head.pth')
    torch.save(backbone, tmp_path / 'backbone.pth')
    model = hub.dinov2_vits14_ade20k_linear(weights=str(tmp_path / 'head.pth'),
                                            backbone_weights=str(tmp_path / 'backbone.pth'),
                                            **TINY)
    sd = model.state_dict()
    for k, v in head.items():
        assert torch.equal(sd[k], v), k
    for k, v in backbone.items():
        assert torch.equal(sd['backbone.' + k], v), k
    assert not model.training


def test_hub_pretrained_without_files_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path))
    monkeypatch.setenv('HOME', str(tmp_path))
    hub = _hub()
    with pytest.raises(FileNotFoundError, match='dinov2_vitb14_voc2012_ms_head.pth'):
        hub.dinov2_vitb14_voc2012_ms(pretrained=True, **TINY)
    names = [n for n in hub.__all__ if n.startswith('dinov2_')]
    assert len(names) == 17 and 'dinov3_vit7b16_ms' in hub.__all__


def test_converter_tool_roundtrip(tmp_path):
    spec = importlib.util.spec_from_file_location(
        'convert_seg_head', osp.join(ROOT, 'tools/convert/convert_seg_head.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    v3_head = {'batchnorm_layer.weight': torch.rand(32), 'batchnorm_layer.bias': torch.rand(32),
               'batchnorm_layer.running_mean': torch.rand(32),
               'batchnorm_layer.running_var': torch.rand(32) + 1,
               'batchnorm_layer.num_batches_tracked': torch.tensor(3),
               'conv.weight': torch.randn(21, 32, 1, 1), 'conv.bias': torch.randn(21)}
    torch.save(v3_head, tmp_path / 'v3_head.pth')
    assert tool.main([str(tmp_path / 'v3_head.pth'), str(tmp_path / 'out.pth')]) == 0
    converted = torch.load(tmp_path / 'out.pth', weights_only=True)['state_dict']
    assert torch.equal(converted['decode_head.conv_seg.weight'], v3_head['conv.weight'])
    model = _hub().dinov2_vits14_voc2012_linear(pretrained=False, **TINY)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected and all(k.startswith('backbone.') for k in missing)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_segmentor_state_dict(str(tmp_path / 'nope.pth'))


def test_hub_dinov3_vit7b16_ms_tiny_and_missing_weights(tmp_path, monkeypatch):
    require('mmdet.models')
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path))
    monkeypatch.setenv('HOME', str(tmp_path))
    hub = _hub()
    tiny = dict(depth=4, embed_dim=32, num_heads=2, feat_channels=32,
                adapter_kwargs=dict(conv_inplane=8, deform_num_heads=4))
    with pytest.raises(FileNotFoundError, match='dinov3_vit7b16_ade20k_m2f_head-bf307cb1.pth'):
        hub.dinov3_vit7b16_ms(pretrained=True, **tiny)
    model = hub.dinov3_vit7b16_ms(pretrained=False, **tiny)
    model.init_weights()
    model.test_cfg.update(crop_size=(48, 48), stride=(32, 32), img_ratios=[1.0])
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, 48, 64))
    assert out[0].pred_sem_seg.data.shape == (1, 48, 64)
    assert model.backbone.interaction_indexes == [0, 1, 2, 3]
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'm2f.pth')
    again = hub.dinov3_vit7b16_ms(pretrained=False, weights=str(tmp_path / 'm2f.pth'), **tiny)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
