"""CPU-side parts of benchmarks/gpu_check.py: arguments, FLOPs / MFU, report, no-CUDA error.

The GPU checks themselves need a CUDA device; these tests cover what decides their numbers
and verdicts: the ViT FLOP formula (against ``torch.utils.flop_counter`` on tiny dino_mm
backbones and against hand computations for ViT-L/16 and ViT-g/14), the MFU arithmetic and
the peak table, the argument checks, the report, and the loud failure without CUDA.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
import gpu_check as gck  # noqa: E402

from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer  # noqa: E402

TINY = dict(patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2)


# ----------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize('arch,extra', [
    ('dinov2_vits14', {}),  # GELU MLP, class token only
    ('dinov2_vitg14', {}),  # fused SwiGLU
    ('dinov3_vits16plus', {}),  # split SwiGLU, 4 storage tokens, RoPE, masked k bias
    ('dinov2_vits14_reg', dict(block_chunks=2)),  # registers, chunked blocks
])
def test_formula_equals_flop_counter_on_tiny_vits(arch, extra):
    model = DinoVisionTransformer(arch=arch, **TINY, **extra)
    shape = gck.vit_shape(model)
    batch, size = 3, 40  # not the model's img_size: 5 x 5 patches
    x = torch.randn(batch, 3, size, size)
    # the math SDPA backend decomposes into matmuls the CPU flop counter sees
    with sdpa_kernel(SDPBackend.MATH):
        fwd = gck.count_flops(lambda: model.forward_features(x))
        assert sum(fwd.values()) == gck.vit_forward_flops(shape, batch, size)
        assert fwd['aten.bmm'] == gck.vit_attention_flops(shape, batch, size)

        def step():
            model.zero_grad(set_to_none=True)
            gck._token_loss(model, x).backward()
        train = gck.count_flops(step)
    # backward = 2 x forward, except the patch embedding's input gradient (no fused
    # attention backward on this path, so no recomputed scores)
    assert sum(train.values()) == gck.expected_counted_train_flops(shape, batch, size, train)
    assert gck.expected_counted_train_flops(shape, batch, size, train) == (
        gck.vit_train_flops(shape, batch, size) - gck.patch_embed_flops(shape, batch, size))
    fused = dict(train, **{'aten._scaled_dot_product_flash_attention_backward': 1})
    assert gck.expected_counted_train_flops(shape, batch, size, fused) == (
        sum(train.values()) + gck.vit_attention_flops(shape, batch, size) // 2)


def test_formula_matches_hand_computation_for_vitl16_and_vitg14():
    with torch.device('meta'):  # the shapes only; no memory, no init cost
        vitl = gck.vit_shape(DinoVisionTransformer(arch='dinov3_vitl16'))
        vitg = gck.vit_shape(DinoVisionTransformer(arch='dinov2_vitg14', img_size=224))
    # ViT-L/16 at 224: 196 patches + cls + 4 storage = 201 tokens, D 1024, MLP 4096
    n, d, h = 201, 1024, 4096
    block = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * h + 2 * 2 * n * n * d
    patch = 2 * 196 * d * 3 * 16 * 16
    assert gck.vit_forward_flops(vitl, 1, 224) == 24 * block + patch == 125_679_796_224
    assert gck.vit_train_flops(vitl, 8, 224) == 3 * 8 * (24 * block + patch)
    # ViT-g/14 at 224: 256 patches + cls = 257 tokens, D 1536, fused SwiGLU hidden 4096
    # (w12: D -> 2 x 4096, w3: 4096 -> D)
    n, d, h = 257, 1536, 4096
    block = 2 * n * d * 4 * d + 2 * n * (d * 2 * h + h * d) + 4 * n * n * d
    patch = 2 * 256 * d * 3 * 14 * 14
    assert gck.vit_forward_flops(vitg, 1, 224) == 40 * block + patch


def test_peak_table_mfu_and_spread():
    assert gck.peak_bf16_tflops('NVIDIA A100-SXM4-80GB') == 312.0
    assert gck.peak_bf16_tflops('NVIDIA H100 80GB HBM3') == 989.0
    assert gck.peak_bf16_tflops('NVIDIA H100 PCIe') == 756.0  # longest key wins
    assert gck.peak_bf16_tflops('NVIDIA H200') == 989.0
    assert gck.peak_bf16_tflops('NVIDIA GeForce RTX 4090') is None
    assert gck.peak_bf16_tflops('NVIDIA GeForce RTX 4090', 165.0) == 165.0
    assert gck.peak_bf16_tflops('NVIDIA H100 80GB HBM3', 500) == 500.0  # override wins
    # 0.5 s per step of 494.5 TFLOP on a 989 TFLOP/s part: 100 %
    assert gck.mfu(494.5e12, 0.5, 989.0) == pytest.approx(1.0)
    assert gck.mfu(3 * 125.68e9 * 64, 0.2, 989.0) == pytest.approx(
        3 * 125.68e9 * 64 / 0.2 / 989e12)
    assert gck.mfu(1e12, 1.0, None) is None
    with pytest.raises(ValueError, match='step time'):
        gck.mfu(1e12, 0.0, 989.0)
    assert gck.spread([3.0, 1.0, 2.0, 10.0]) == dict(min=1.0, median=2.5, max=10.0)


# ------------------------------------------------------------------------- arguments
def test_parse_args_defaults_and_errors(capsys):
    args = gck.parse_args([])
    assert args.only == gck.CHECKS and args.peak_tflops is None
    assert (args.vitl_batch, args.vitg_batch, args.img_size) == (64, 32, 224)
    args = gck.parse_args(['--only', 'fsdp, timm', '--peak-tflops', '756', '--iters', '3'])
    assert args.only == ('fsdp', 'timm') and args.peak_tflops == 756.0 and args.iters == 3
    for bad, message in ((['--only', 'fsdp,speed'], "unknown check(s) ['speed']"),
                         (['--peak-tflops', '-1'], '-1 must be a positive number'),
                         (['--iters', '0'], '0 must be >= 1'),
                         (['--timm-arch', 'vit_huge'], "'vit_huge' is not a dino_mm ViT")):
        with pytest.raises(SystemExit) as exc:
            gck.parse_args(bad)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- report
def test_report_lists_every_check_and_the_verdict():
    results = [
        gck.CheckResult('xformers', 'NOT RUN', 'xFormers is not importable', seconds=0.01),
        gck.CheckResult('fsdp-dcp', 'PASS', 'resume repeats step 3',
                       dict(loss_diff=0.0, losses_1_2_3=[1.5, 1.25]), 12.34),
        gck.CheckResult('train ViT-L/16', 'FAIL', 'flop_counter counts x1.2 the formula',
                       dict(img_s=812.3456, mfu=0.41234, tflop_s=2.5e-4,
                            ms=dict(min=1.0, median=2.0, max=3.5)), 20.0),
    ]
    text = gck.format_report(results, dict(device='NVIDIA H100 80GB HBM3', torch='2.14.1'))
    lines = text.splitlines()
    assert lines[0] == '== dino_mm gpu_check ==' and 'device: NVIDIA H100 80GB HBM3' in lines
    assert any(line.startswith('fsdp-dcp') and 'PASS' in line and '12.3s' in line
               for line in lines)
    assert any(line.startswith('xformers') and 'NOT RUN' in line for line in lines)
    for expected in ('img_s: 812.346', 'mfu: 0.41234', 'tflop_s: 2.5000e-04',
                     'ms: 1/2/3.5', 'loss_diff: 0', 'losses_1_2_3: [1.5, 1.25]'):
        assert any(line.strip() == expected for line in lines), expected
    assert lines[-1] == 'gpu_check: 1 FAILED (train ViT-L/16); not run: xformers'
    assert gck.exit_code(results) == 1
    assert gck.exit_code(results[:2]) == 0
    assert gck.format_report(results[1:2], {}).splitlines()[-1] == 'gpu_check: all checks passed'


# ---------------------------------------------------------------------------- no CUDA
def test_require_cuda_raises_without_cuda():
    with pytest.raises(gck.CudaMissingError, match='needs one CUDA GPU'):
        gck.require_cuda(lambda: False)
    gck.require_cuda(lambda: True)


def test_no_cuda_fails_loudly_from_the_shell_script(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable,
               OUT_DIR=str(tmp_path / 'out'))
    proc = subprocess.run(['bash', osp.join(ROOT, 'benchmarks', 'gpu_check.sh'), '--only',
                           'fsdp'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    out = proc.stdout + proc.stderr
    assert 'gpu_check: FAILED: CUDA is not available' in out
    assert "CUDA_VISIBLE_DEVICES='' hides the GPUs" in out
    assert 'gpu_check: FAILED' in (tmp_path / 'out' / 'report.txt').read_text()


def test_fsdp_fp16_check_runs_on_gloo(tmp_path):
    """The fp16 FSDP check's logic (FP16OptimWrapper, scale in the checkpoint meta, resume)
    on CPU / gloo, the backend the script picks without CUDA; a smaller head and crops."""
    import argparse
    args = gck.parse_args(['--work-dir', str(tmp_path)])
    spec = argparse.Namespace(arch='dinov2_vits14', global_size=42, local_size=28, n_local=2,
                              prototypes=512, hidden=128, bottleneck=64, batch=2)
    result = gck.check_fsdp_dcp(args, torch.device('cpu'), fp16=True, spec=spec)
    assert result.status == 'PASS', result.detail
    assert result.name == 'fsdp-fp16-dcp'
    assert result.metrics['skipped_steps'][:3] != [True] * 3
    assert result.metrics['loss_scale'] > 0


def test_fp8_check_logic_on_cpu():
    """The fp8 check's numerics and report on CPU (torch._scaled_mm runs there too)."""
    result = gck.check_fp8(gck.parse_args([]), torch.device('cpu'), size=128, rounds=2)
    assert result.status == 'PASS', result.detail
    assert 0 < result.metrics['rel error vs bf16'] < 0.05
    assert result.metrics['fp8/bf16 speed (median)'] > 0
