"""Exported backbones (TorchScript, ONNX) reproduce eager outputs at two input sizes."""
import pytest
import torch

from dino_mm.apis import (FeatureExportWrapper, build_backbone, export_onnx,
                          export_torchscript, max_abs_diff, onnx_runner)

from tests.oracles import require

TINY = dict(depth=2, embed_dim=64, num_heads=2)


@pytest.fixture(scope='module')
def v3_model():
    torch.manual_seed(0)
    return build_backbone('dinov3_vits16', **TINY)


def test_wrapper_returns_cls_and_patch_tokens(v3_model):
    cls, patch = FeatureExportWrapper(v3_model)(torch.randn(2, 3, 48, 64))
    assert cls.shape == (2, 64) and patch.shape == (2, 12, 64)


def test_torchscript_trace_v3_two_sizes(v3_model, tmp_path):
    module = export_torchscript(v3_model, str(tmp_path / 'v3.pt'), (64, 64))
    loaded = torch.jit.load(str(tmp_path / 'v3.pt'))
    # RoPE has no size-dependent python arithmetic, so one trace serves every size.
    diffs = max_abs_diff(v3_model, loaded, [(64, 64), (48, 80)], batch=2)
    assert max(diffs.values()) <= 1e-4, diffs  # measured 0.0
    assert max(max_abs_diff(v3_model, module, [(64, 64)]).values()) <= 1e-4


@pytest.mark.parametrize('arch', ['dinov2_vits14', 'dinov2_vits14_reg'])
def test_torchscript_trace_v2_one_trace_every_size(tmp_path, arch):
    # DINOv2's position-embedding interpolation follows the traced sizes (the interpolation
    # matrices are built from them), so one trace serves other sizes too.
    model = build_backbone(arch, **TINY)
    export_torchscript(model, str(tmp_path / 'v2.pt'), (56, 56))
    loaded = torch.jit.load(str(tmp_path / 'v2.pt'))
    diffs = max_abs_diff(model, loaded, [(56, 56), (70, 70), (42, 84), (518, 518)], batch=2)
    assert max(diffs.values()) <= 1e-4, diffs  # measured ~1e-6; 518 (stored grid) 0.0


def test_torchscript_rejects_bad_method(v3_model, tmp_path):
    with pytest.raises(ValueError, match='trace'):
        export_torchscript(v3_model, str(tmp_path / 'x.pt'), method='compile')


def test_onnx_dynamic_v3_two_sizes(v3_model, tmp_path):
    require('onnx')
    info = export_onnx(v3_model, str(tmp_path / 'v3.onnx'), (64, 64),
                       check_sizes=[(64, 64), (48, 80)])
    assert info['dynamic'], info
    runner = onnx_runner(info['path'])
    if runner is None:
        pytest.skip('onnxruntime not installed: graph only checked with onnx.checker')
    diffs = max_abs_diff(v3_model, runner, [(64, 64), (48, 80)], batch=2)
    assert max(diffs.values()) <= 1e-4, diffs  # measured ~3e-6


@pytest.mark.parametrize('arch', ['dinov2_vits14', 'dinov2_vits14_reg'])
def test_onnx_dynamic_v2_two_sizes(tmp_path, arch):
    require('onnx')
    model = build_backbone(arch, **TINY)
    info = export_onnx(model, str(tmp_path / 'v2.onnx'), (56, 56), check_sizes=[(56, 56)])
    assert info['dynamic'] and 'dynamic_error' not in info, info
    runner = onnx_runner(info['path'])
    if runner is None:
        pytest.skip('onnxruntime not installed: graph only checked with onnx.checker')
    # 56 -> 70 is 224 -> 280 for 14-pixel patches: four patches more per side.
    diffs = max_abs_diff(model, runner, [(56, 56), (70, 70), (42, 84)], batch=2)
    assert max(diffs.values()) <= 1e-4, diffs  # measured ~3e-6


def test_onnx_falls_back_to_static_graph_when_dynamic_one_is_wrong(tmp_path, monkeypatch):
    """A backbone whose interpolation freezes the traced size: the dynamic graph fails the
    check at a second size (added even when only the example size is asked for) and a
    static graph is written instead."""
    require('onnx')
    require('onnxruntime')
    from dino_mm.models.backbones import vision_transformer
    model = build_backbone('dinov2_vits14', **TINY)
    monkeypatch.setattr(vision_transformer, '_exporting', lambda: False)
    model.traceable_pos_embed = False
    info = export_onnx(model, str(tmp_path / 'v2.onnx'), (56, 70), check_sizes=[(56, 70)])
    assert not info['dynamic'] and info['input_shape'] == [1, 3, 56, 70], info
    assert 'dynamic_error' in info
    diffs = max_abs_diff(model, onnx_runner(info['path']), [(56, 70)])
    assert max(diffs.values()) <= 1e-4, diffs


def test_script_method_gives_clear_error(v3_model, tmp_path):
    with pytest.raises(RuntimeError, match="method='trace'"):
        export_torchscript(v3_model, str(tmp_path / 's.pt'), method='script')
