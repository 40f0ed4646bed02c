"""tools/export.py as users run it (a subprocess): DINOv2 exports with dynamic sizes, and
the tool's exit status reports its own check."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dino_mm.apis import build_backbone, max_abs_diff, onnx_runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT = os.path.join(ROOT, 'tools', 'export.py')
TINY = ['depth=2', 'embed_dim=64', 'num_heads=2']


def _run(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, EXPORT, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env=env)


def _report(stdout):
    return json.loads(stdout[stdout.index('{'):])


def _weights(tmp_path, arch):
    model = build_backbone(arch, depth=2, embed_dim=64, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / f'{arch}.pth'
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize('arch', ['dinov2_vits14', 'dinov2_vits14_reg'])
def test_export_tool_dinov2_dynamic_sizes(tmp_path, arch):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    model, weights = _weights(tmp_path, arch)
    out = tmp_path / 'm'
    # Default check sizes: the example (56 = 4 patches) and 4 patches more (112).
    res = _run('--arch', arch, '--weights', weights, '--override', *TINY, '--out', out,
               '--example-size', '56', '56')
    assert res.returncode == 0, res.stderr[-3000:]
    report = _report(res.stdout)
    assert report['ok'] and report['onnx']['dynamic'], report
    assert set(report['onnx']['max_abs_diff']) == {'(56, 56)', '(112, 112)'}
    # Independently: onnxruntime and the TorchScript file at the 224 / 280 equivalents
    # for 14-pixel patches (56 -> 70: one more patch per side) and a non-square size.
    sizes = [(56, 56), (70, 70), (42, 84)]
    onnx_diffs = max_abs_diff(model, onnx_runner(f'{out}.onnx'), sizes, batch=2)
    assert max(onnx_diffs.values()) <= 1e-4, onnx_diffs
    ts_diffs = max_abs_diff(model, torch.jit.load(f'{out}.pt'), sizes, batch=2)
    assert max(ts_diffs.values()) <= 1e-4, ts_diffs


def test_export_tool_exits_non_zero_when_its_check_fails(tmp_path):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    _, weights = _weights(tmp_path, 'dinov2_vits14')
    # A static graph cannot run the second size the user asked to check.
    res = _run('--arch', 'dinov2_vits14', '--weights', weights, '--override', *TINY,
               '--out', tmp_path / 'm', '--format', 'onnx', '--static',
               '--example-size', '56', '56', '--check-sizes', '56,56', '70,70')
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    report = _report(res.stdout)
    assert report['ok'] is False
    assert report['onnx']['max_abs_diff']['(70, 70)'] == float('inf')
    assert 'error: the exported onnx model' in res.stderr and '(70, 70)' in res.stderr
    assert 'static' in res.stderr and str(tmp_path / 'm.onnx') in res.stderr
