"""One-GPU check of dino_mm's CUDA paths, with throughput and MFU figures (< 5 minutes).

Run it from a fresh clone (after the environment setup) on a machine with one CUDA GPU::

    python benchmarks/gpu_check.py [--peak-tflops 989] [--json out.json]
    bash benchmarks/gpu_check.sh          # the same, the report also saved under work_dirs/

Checks, each reported PASS / FAIL (or NOT RUN, with the reason, for xFormers when it is not
installed; ``--require-xformers`` turns that into a failure):

* ``xformers``: dino_mm ``Attention`` with its xFormers memory-efficient path against the same
  module on PyTorch SDPA (same weights, same inputs): outputs and gradients, fp32 and bf16;
  and a whole DINOv2 backbone forward with the path on and off.
* ``amp-bf16`` / ``amp-fp16``: training steps of a ViT backbone under bf16 autocast and under
  fp16 autocast with a ``torch.amp.GradScaler``; losses finite, first loss close to the
  fp32 one, weights updated, fp16 steps not all skipped by the scaler.
* ``fp8``: the official fp8 block matmul (:func:`dino_mm.models.layers.fp8_linear.
  fp8_linear`) on a 4096 x 4096 product against bf16: relative error < 5 %, speed ratio
  (NOT RUN on GPUs without fp8 tensor cores).
* ``fsdp-dcp`` / ``fsdp-fp16-dcp``: a DINOv2 student/teacher sharded with FSDP2
  (:func:`shard_dino_model`; bf16, then the official fp16 table with
  ``dino_mm.FP16OptimWrapper``) on a 1-rank NCCL group; two steps, a DCP checkpoint
  (:func:`save_sharded_checkpoint`), a third step; then a fresh, differently initialised
  model resumed from the checkpoint (:func:`load_sharded_checkpoint`) must repeat the third
  step: same loss, same weights afterwards.
* ``train ViT-L/16`` / ``train ViT-g/14``: bf16 training steps (forward, backward, fused
  AdamW) of the backbones: img/s, s/step, model TFLOP/s and MFU. Model FLOPs are counted
  analytically (:func:`vit_train_flops`: three times the forward matmul FLOPs) and checked
  against ``torch.utils.flop_counter`` on one step. MFU = model FLOPs / step time / peak
  bf16 FLOP/s of the GPU, the peak from :data:`PEAK_BF16_TFLOPS` by device name or
  ``--peak-tflops``.
* ``forward vs timm``: the dino_mm backbone and timm's equivalent ViT with the same weights
  (converted by ``dino_mm.models.converters``) on the same batch: output difference, then
  interleaved timing rounds (the order alternates each round), min / median / max.

Exit status: 0 when nothing failed, 1 when a check failed, 2 when CUDA is missing or the
arguments are bad. The script never skips because of a missing GPU: it stops with an error.
"""
import argparse
import copy
import functools
import gc
import json
import math
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from pretrain_throughput import PEAK_BF16_TFLOPS as _BASE_PEAKS  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendor data sheets; the SXM
# parts by default. Matched against torch.cuda.get_device_name: the longest key contained
# in the name wins ("NVIDIA H100 PCIe" -> 'H100 PCIe'). Other GPUs: pass --peak-tflops.
PEAK_BF16_TFLOPS: Dict[str, float] = dict(_BASE_PEAKS, **{'H100 PCIe': 756.0})
CHECKS = ('xformers', 'amp', 'fp8', 'fsdp', 'throughput', 'timm')
# The two training benchmarks: DINOv3 ViT-L/16 (MLP) and DINOv2 ViT-g/14 (fused SwiGLU).
TRAIN_ARCHS = (('ViT-L/16', 'dinov3_vitl16'), ('ViT-g/14', 'dinov2_vitg14'))


class CudaMissingError(RuntimeError):
    """Raised when the script runs without a usable CUDA device."""


@dataclass
class CheckResult:
    """Outcome of one check: ``status`` is 'PASS', 'FAIL' or 'NOT RUN'."""
    name: str
    status: str
    detail: str = ''
    metrics: Dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- arguments
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} must be >= 1')
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'{text} must be a positive number')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options; ``--only`` is returned as a tuple of check names."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--peak-tflops', type=_positive_float, default=None,
                   help='peak dense bf16 TFLOP/s of the GPU for MFU (default: by device '
                   f'name from {sorted(PEAK_BF16_TFLOPS)})')
    p.add_argument('--only', default=','.join(CHECKS),
                   help=f'comma-separated subset of {",".join(CHECKS)} (default: all)')
    p.add_argument('--img-size', type=_positive_int, default=224)
    p.add_argument('--warmup', type=_positive_int, default=3, help='untimed steps first')
    p.add_argument('--iters', type=_positive_int, default=10, help='timed training steps')
    p.add_argument('--vitl-batch', type=_positive_int, default=64)
    p.add_argument('--vitg-batch', type=_positive_int, default=32)
    p.add_argument('--amp-arch', default='dinov2_vitb14')
    p.add_argument('--amp-batch', type=_positive_int, default=16)
    p.add_argument('--amp-steps', type=_positive_int, default=5)
    p.add_argument('--timm-arch', default='dinov2_vitl14')
    p.add_argument('--timm-batch', type=_positive_int, default=64)
    p.add_argument('--rounds', type=_positive_int, default=6,
                   help='interleaved timing rounds of the dino_mm / timm forward')
    p.add_argument('--round-iters', type=_positive_int, default=10,
                   help='forwards per implementation and round')
    p.add_argument('--require-xformers', action='store_true',
                   help='fail (instead of NOT RUN) when xFormers cannot be imported')
    p.add_argument('--work-dir', default=None,
                   help='where the DCP checkpoint is written (default: a temporary folder)')
    p.add_argument('--json', default=None, help='also write the results to this file')
    args = p.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(',') if name.strip())
    unknown = sorted(set(only) - set(CHECKS))
    if unknown or not only:
        p.error(f'--only {args.only!r}: unknown check(s) {unknown}; choose from '
                f'{",".join(CHECKS)}')
    args.only = only
    from dino_mm.models.backbones.vision_transformer import DINO_VIT_ARCHS
    for opt in ('amp_arch', 'timm_arch'):
        if getattr(args, opt) not in DINO_VIT_ARCHS:
            p.error(f'--{opt.replace("_", "-")} {getattr(args, opt)!r} is not a dino_mm ViT '
                    f'arch; choose from {sorted(DINO_VIT_ARCHS)}')
    return args


def require_cuda(is_available: Optional[Callable[[], bool]] = None) -> None:
    """Stop with a clear message when no CUDA device can be used.

    Args:
        is_available (Callable, optional): Defaults to ``torch.cuda.is_available``.

    Raises:
        CudaMissingError: No usable CUDA device.
    """
    if (is_available or torch.cuda.is_available)():
        return
    built = torch.version.cuda or 'none (a CPU-only build)'
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    hint = (f' CUDA_VISIBLE_DEVICES={visible!r} hides the GPUs.' if visible is not None
            else '')
    raise CudaMissingError(
        f'CUDA is not available (torch {torch.__version__}, built for CUDA {built}; '
        f'torch.cuda.is_available() is False).{hint} benchmarks/gpu_check.py checks the GPU '
        'paths and needs one CUDA GPU: run it on a GPU machine with a CUDA build of torch; '
        'it does not fall back to the CPU.')


# ----------------------------------------------------------------------- FLOPs and MFU
@dataclass(frozen=True)
class ViTShape:
    """What the FLOP count of a plain ViT depends on.

    Args:
        embed_dim (int): Width ``D``.
        depth (int): Number of blocks.
        patch_size (int): Patch side ``p``.
        prefix_tokens (int): Class + register / storage tokens.
        ffn_macs (int): Multiply-accumulates of the feed-forward layer per token
            (``2 * D * hidden`` for an MLP, ``3 * D * hidden`` for SwiGLU).
        in_chans (int): Image channels. Defaults to 3.
    """
    embed_dim: int
    depth: int
    patch_size: int
    prefix_tokens: int
    ffn_macs: int
    in_chans: int = 3


def vit_shape(model: nn.Module) -> ViTShape:
    """Read the :class:`ViTShape` of a :class:`~dino_mm.DinoVisionTransformer`."""
    blocks = list(model._flat_blocks()) if callable(getattr(model, '_flat_blocks', None)) \
        else [b for b in model.blocks if not isinstance(b, nn.Identity)]
    ffn = blocks[0].mlp
    macs = sum(m.in_features * m.out_features for m in ffn.modules()
               if isinstance(m, nn.Linear))
    return ViTShape(embed_dim=model.embed_dim, depth=len(blocks),
                    patch_size=model.patch_size, prefix_tokens=model.num_prefix_tokens,
                    ffn_macs=macs, in_chans=model.patch_embed.proj.in_channels)


def patch_embed_flops(shape: ViTShape, batch: int, img_size: int) -> int:
    """Forward FLOPs of the patch-embedding convolution (2 per multiply-accumulate)."""
    patches = (img_size // shape.patch_size) ** 2
    return 2 * batch * patches * shape.embed_dim * shape.in_chans * shape.patch_size ** 2


def vit_forward_flops(shape: ViTShape, batch: int, img_size: int) -> int:
    """Matmul FLOPs of one forward pass (2 per multiply-accumulate).

    Per block and image, with ``N`` tokens: qkv ``2 N D 3D``, attention scores and the
    weighted sum ``2 * 2 N^2 D``, output projection ``2 N D D``, feed-forward
    ``2 N ffn_macs``; plus the patch embedding. Norms, activations, RoPE and residuals are
    elementwise and not counted (the usual model-FLOPs convention).
    """
    tokens = (img_size // shape.patch_size) ** 2 + shape.prefix_tokens
    d = shape.embed_dim
    linear = batch * shape.depth * 2 * tokens * (4 * d * d + shape.ffn_macs)
    return (linear + vit_attention_flops(shape, batch, img_size)
            + patch_embed_flops(shape, batch, img_size))


def vit_attention_flops(shape: ViTShape, batch: int, img_size: int) -> int:
    """The attention part of :func:`vit_forward_flops` (``q k^T`` and ``a v``)."""
    tokens = (img_size // shape.patch_size) ** 2 + shape.prefix_tokens
    return batch * shape.depth * 4 * tokens * tokens * shape.embed_dim


def vit_train_flops(shape: ViTShape, batch: int, img_size: int) -> int:
    """Model FLOPs of one training step: forward + backward = 3 x the forward FLOPs."""
    return 3 * vit_forward_flops(shape, batch, img_size)


def peak_bf16_tflops(device_name: str, override: Optional[float] = None) -> Optional[float]:
    """Peak dense bf16 TFLOP/s: ``override``, else the longest table key in the name."""
    if override is not None:
        return float(override)
    keys = [k for k in PEAK_BF16_TFLOPS if k.lower() in device_name.lower()]
    return PEAK_BF16_TFLOPS[max(keys, key=len)] if keys else None


def mfu(flops_per_step: float, step_seconds: float, peak_tflops: Optional[float]
        ) -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a peak)."""
    if step_seconds <= 0:
        raise ValueError(f'step time must be > 0 s, got {step_seconds}')
    if not peak_tflops:
        return None
    return flops_per_step / step_seconds / (peak_tflops * 1e12)


def spread(values: Sequence[float]) -> Dict[str, float]:
    """min / median / max of timing samples."""
    return dict(min=min(values), median=statistics.median(values), max=max(values))


# ---------------------------------------------------------------------------- report
def _fmt(value) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f'{value:.4e}'
        return f'{value:.6g}'
    if isinstance(value, dict):
        return '/'.join(_fmt(v) for v in value.values())
    return str(value)


def format_report(results: Sequence[CheckResult], env: Dict[str, object]) -> str:
    """Human-readable report: environment, one line per check, metrics, verdict."""
    lines = ['== dino_mm gpu_check ==']
    lines += [f'{k}: {v}' for k, v in env.items()]
    width = max([len(r.name) for r in results] + [5])
    lines.append('')
    lines.append(f'{"check":{width}s}  {"status":7s}  {"time":>7s}  detail')
    for r in results:
        lines.append(f'{r.name:{width}s}  {r.status:7s}  {r.seconds:6.1f}s  {r.detail}')
        for key, value in r.metrics.items():
            lines.append(f'{"":{width}s}    {key}: {_fmt(value)}')
    failed = [r.name for r in results if r.status == 'FAIL']
    not_run = [r.name for r in results if r.status == 'NOT RUN']
    lines.append('')
    verdict = f'{len(failed)} FAILED ({", ".join(failed)})' if failed else 'all checks passed'
    if not_run:
        verdict += f'; not run: {", ".join(not_run)}'
    lines.append(f'gpu_check: {verdict}')
    return '\n'.join(lines)


def exit_code(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status == 'FAIL' for r in results) else 0


def _version_text(version) -> str:
    return '.'.join(map(str, version)) if isinstance(version, (tuple, list)) else str(version)


def environment() -> Dict[str, object]:
    """Versions and the device, for the report header."""
    info: Dict[str, object] = dict(torch=torch.__version__, cuda=torch.version.cuda)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f'{props.major}.{props.minor}',
                    memory_gib=round(props.total_memory / 2**30, 1),
                    nccl=_version_text(torch.cuda.nccl.version()))
    for name in ('xformers', 'timm', 'mmengine'):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - any failure: report it
            info[name] = f'not importable ({type(exc).__name__}: {exc})'
    return info


# ------------------------------------------------------------------------------ checks
# The checks take the device as an argument (``main`` insists on CUDA); everything but the
# timings also runs on a CPU device, which is how the script was dry-run without a GPU.
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None


def _free(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def _skip_task_registry_imports() -> None:
    from ssl_step import _skip_task_registry_imports as skip
    skip()


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def check_xformers(args: argparse.Namespace, device: torch.device) -> CheckResult:
    """xFormers path of dino_mm Attention vs SDPA: outputs and gradients."""
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    from dino_mm.models.layers.attention import Attention, xformers_available
    if not xformers_available():
        try:
            import importlib
            importlib.import_module('xformers.ops')
            why = 'imported, but dino_mm could not load memory_efficient_attention'
        except Exception as exc:  # noqa: BLE001
            why = f'{type(exc).__name__}: {exc}'
        return CheckResult('xformers', 'FAIL' if args.require_xformers else 'NOT RUN',
                           f'xFormers is not importable ({why}); `pip install xformers` '
                           'matching this torch to check its attention path')
    metrics, bad = {}, []
    # fp32: kernels agree to rounding; bf16: to bf16 precision
    for dtype, tol in ((torch.float32, 2e-4), (torch.bfloat16, 3e-2)):
        torch.manual_seed(0)
        attn = Attention(384, num_heads=6).to(device)
        x = torch.randn(4, 261, 384, device=device)
        outs, grads = [], []
        for use_xformers in (True, False):
            attn.use_xformers = use_xformers
            attn.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = attn(xi)
            out.float().square().mean().backward()
            outs.append(out.detach())
            grads.append(torch.cat([xi.grad.flatten(), attn.qkv.weight.grad.flatten()]))
        tag = 'fp32' if dtype == torch.float32 else 'bf16'
        metrics[f'{tag} out rel diff'] = _max_rel(outs[0], outs[1])
        metrics[f'{tag} grad rel diff'] = _max_rel(grads[0], grads[1])
        if metrics[f'{tag} out rel diff'] > tol or metrics[f'{tag} grad rel diff'] > tol:
            bad.append(f'{tag} differs by more than {tol}')
    torch.manual_seed(0)
    model = DinoVisionTransformer(arch='dinov2_vits14', img_size=224).to(device).eval()
    x = torch.randn(8, 3, 224, 224, device=device)
    cls = []
    for use_xformers in (True, False):
        for block in model._flat_blocks():
            block.attn.use_xformers = use_xformers
        with torch.no_grad():
            cls.append(model(x))
    metrics['ViT-S/14 fp32 cls rel diff'] = _max_rel(cls[0], cls[1])
    if metrics['ViT-S/14 fp32 cls rel diff'] > 1e-3:
        bad.append('the backbone output differs')
    return CheckResult('xformers', 'FAIL' if bad else 'PASS',
                       '; '.join(bad) or 'xFormers attention = SDPA (outputs, gradients)',
                       metrics)


def _amp_model(args: argparse.Namespace, device: torch.device):
    from backbone_speed import build_dino_mm
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the GPU: no slow CPU init of big models
        return build_dino_mm(args.amp_arch, args.img_size).train()


def _token_loss(model: nn.Module, x: torch.Tensor,
                target: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """Mean squared error of the class and patch tokens (to ``target``, else to 0)."""
    out = model.forward_features(x)
    loss = 0
    for key in ('x_norm_clstoken', 'x_norm_patchtokens'):
        diff = out[key].float() - (target[key] if target is not None else 0)
        loss = loss + diff.square().mean()
    return loss


def check_amp(args: argparse.Namespace, device: torch.device, dtype: torch.dtype
              ) -> CheckResult:
    """Training steps under bf16 autocast, or fp16 autocast with a GradScaler."""
    tag = 'bf16' if dtype == torch.bfloat16 else 'fp16'
    model = _amp_model(args, device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.amp_batch, 3, args.img_size, args.img_size, device=device,
                    generator=gen)
    with torch.no_grad():
        shapes = {k: v.shape for k, v in model.forward_features(x).items()
                  if k in ('x_norm_clstoken', 'x_norm_patchtokens')}
        target = {k: torch.randn(shape, device=device, generator=gen)
                  for k, shape in shapes.items()}
        ref = float(_token_loss(model, x, target))  # fp32, same weights and batch
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    losses, applied = [], 0
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.amp_steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype):
            loss = _token_loss(model, x, target)
        scaler.scale(loss).backward()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(opt)
        scaler.update()
        # the scaler lowers its scale exactly when it skipped the step (inf/NaN grads)
        applied += int(not scaler.is_enabled() or scaler.get_scale() >= scale)
        losses.append(float(loss.detach()))
    _sync(device)
    ms = 1000 * (time.perf_counter() - start) / args.amp_steps
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))
    finite = all(math.isfinite(v) for v in losses) and all(
        torch.isfinite(p).all() for p in model.parameters())
    rel0 = abs(losses[0] - ref) / max(abs(ref), 1e-12)
    bad = []
    if not finite:
        bad.append('non-finite loss or weights')
    if rel0 > 5e-2:
        bad.append(f'first {tag} loss {losses[0]:.5g} is {rel0:.1%} off the fp32 {ref:.5g}')
    if moved == 0:
        bad.append('no weight changed')
    if applied == 0:
        bad.append('the GradScaler skipped every step')
    metrics = dict(arch=args.amp_arch, batch=args.amp_batch, losses=[round(v, 5) for v in losses],
                   fp32_loss=round(ref, 5), first_step_rel_diff=rel0,
                   steps_applied=f'{applied}/{args.amp_steps}', ms_per_step=ms)
    if scaler.is_enabled():
        metrics['final_scale'] = scaler.get_scale()
    return CheckResult(f'amp-{tag}', 'FAIL' if bad else 'PASS',
                       '; '.join(bad) or f'{args.amp_steps} {tag} steps', metrics)


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, 'full_tensor') else t).detach().float().clone()


def interleaved_ms(device: torch.device, fns: Dict[str, Callable[[], object]], rounds: int,
                   iters: int = 1) -> Dict[str, List[float]]:
    """ms per call of each of two functions, timed in alternating order round by round
    (``iters`` calls per round), so drifts of the machine hit both alike."""
    first, second = list(fns)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in ((first, second) if r % 2 == 0 else (second, first)):
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                fns[k]()
            _sync(device)
            times[k].append(1000 * (time.perf_counter() - start) / iters)
    return times


def check_fp8(args: argparse.Namespace, device: torch.device, size: int = 4096,
              rounds: int = 10) -> CheckResult:
    """fp8 block matmuls (official ``fp8_enabled``) against bf16: error and speed."""
    from dino_mm.models.layers.fp8_linear import fp8_linear
    if device.type == 'cuda' and torch.cuda.get_device_capability(device) < (8, 9):
        return CheckResult('fp8', 'NOT RUN', 'this GPU has no fp8 tensor cores (needs compute '
                           'capability 8.9+, e.g. L40 / H100)')
    torch.manual_seed(0)
    x = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    w = torch.randn(size, size, device=device, dtype=torch.bfloat16) * size**-0.5
    ref = torch.nn.functional.linear(x, w)
    out = fp8_linear(x, w)
    rel = float((out.float() - ref.float()).norm() / ref.float().norm())
    times = interleaved_ms(device, {'fp8': lambda: fp8_linear(x, w),
                                    'bf16': lambda: torch.nn.functional.linear(x, w)}, rounds)
    speed = spread(times['bf16'])['median'] / spread(times['fp8'])['median']
    metrics = {'size': size, 'rel error vs bf16': rel, 'fp8/bf16 speed (median)': speed,
               **{f'{k} ms min/median/max': spread(v) for k, v in times.items()}}
    ok = rel < 0.05
    return CheckResult('fp8', 'PASS' if ok else 'FAIL',
                       f'fp8 x{speed:.2f} bf16 speed, rel error {rel:.3g}' if ok else
                       f'fp8 product off by {rel:.3g} (relative)', metrics)


def check_fsdp_dcp(args: argparse.Namespace, device: torch.device, fp16: bool = False,
                   spec: Optional[argparse.Namespace] = None) -> CheckResult:
    """1-GPU FSDP2 (NCCL) training; a DCP save + resume repeats the next step.

    ``fp16``: the official DINOv2 table (fp16 parameters) with ``dino_mm.FP16OptimWrapper``;
    the loss scale travels in the checkpoint's meta, as the strategy saves it. ``spec``:
    the model / batch sizes (:mod:`ssl_step` arguments); a ViT-S/14 at 98 px by default.
    """
    name = 'fsdp-fp16-dcp' if fp16 else 'fsdp-dcp'
    import torch.distributed as dist
    from mmengine.optim import OptimWrapper
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.device_mesh import init_device_mesh

    from dino_mm.engine.fsdp import (DEFAULT_MIXED_PRECISION, FP16_MIXED_PRECISION,
                                     fsdp_update_teacher, load_sharded_checkpoint,
                                     save_sharded_checkpoint, shard_dino_model)
    from dino_mm.engine.optimizers import FP16OptimWrapper
    from ssl_step import build_batch, build_model
    _skip_task_registry_imports()
    want = 'nccl' if device.type == 'cuda' else 'gloo'
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(want, store=dist.HashStore(), rank=0, world_size=1,
                                **(dict(device_id=device) if want == 'nccl' else {}))
    try:
        backend = dist.get_backend()
        if backend != want:
            return CheckResult(name, 'FAIL', f'process group backend is {backend}, '
                               f'not {want}')
        mesh = init_device_mesh(device.type, (1, ))
        spec = spec or argparse.Namespace(arch='dinov2_vits14', global_size=98,
                                          local_size=42, n_local=2, prototypes=4096,
                                          hidden=512, bottleneck=128, batch=4)
        batch = {k: v.to(device) if torch.is_tensor(v) else v
                 for k, v in build_batch(spec).items()}

        def make(perturb: bool):
            model = build_model(spec)
            if perturb:  # prove that the resume, not the seed, restores the weights
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.02)
            model.to(device)
            table = FP16_MIXED_PRECISION if fp16 else DEFAULT_MIXED_PRECISION
            shard_dino_model(model, mesh, copy.deepcopy(table))
            params = [p for p in model.student.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04)
            if fp16:
                # a low start: the 3 steps of this check must not all go to finding the scale
                return model, FP16OptimWrapper(optimizer=optimizer, device_type=device.type,
                                               loss_scale=dict(init_scale=2.0**6))
            return model, OptimWrapper(optimizer)

        def step(model, optim) -> float:
            model.train()
            log = model.train_step(copy.copy(batch), optim)
            skipped.append(bool(getattr(optim, 'skipped_last_step', False)))
            fsdp_update_teacher(model, 0.99)
            return float(log['loss'].detach())

        def state(model, optim) -> dict:
            return {'model': get_model_state_dict(model),
                    'optim': get_optimizer_state_dict(model, optim.optimizer)}

        skipped: List[bool] = []
        work = args.work_dir or tempfile.mkdtemp(prefix='gpu_check_')
        path = osp.join(work, 'iter_2.pth')
        model, optim = make(False)
        first = [step(model, optim), step(model, optim)]
        meta = {'meta': {'iter': 2}}
        if fp16:
            meta['loss_scaler'] = optim.loss_scaler.state_dict()
        save_sharded_checkpoint(path, state(model, optim), meta)
        third = step(model, optim)
        after = {k: _full(v) for k, v in model.student.state_dict().items()}
        del model, optim
        gc.collect()
        _free(device)

        resumed, r_optim = make(True)
        target = state(resumed, r_optim)
        meta = load_sharded_checkpoint(path, target)
        set_model_state_dict(resumed, target['model'])
        set_optimizer_state_dict(resumed, r_optim.optimizer, target['optim'])
        if fp16:
            r_optim.loss_scaler.load_state_dict(meta['loss_scaler'])
        again = step(resumed, r_optim)
        diff = max(float((_full(v) - after[k]).abs().max())
                   for k, v in resumed.student.state_dict().items())
        loss_diff = abs(again - third)
        bad = []
        if meta.get('meta', {}).get('iter') != 2:
            bad.append(f'meta.pth holds {meta!r}')
        if not all(math.isfinite(v) for v in first + [third, again]):
            bad.append('non-finite loss')
        if all(skipped[:3]):
            bad.append('the gradient scaler skipped every step')
        if loss_diff > 1e-5 * max(1.0, abs(third)):
            bad.append(f'resumed step-3 loss {again:.7g} != {third:.7g}')
        if diff > 1e-4:
            bad.append(f'weights after the resumed step differ by {diff:.3g}')
        metrics = dict(losses_1_2_3=[round(v, 6) for v in first + [third]],
                       resumed_loss_3=round(again, 6), loss_diff=loss_diff,
                       max_weight_diff=diff, checkpoint=path)
        if fp16:
            metrics.update(loss_scale=r_optim.loss_scaler.get_scale(), skipped_steps=skipped)
        return CheckResult(name, 'FAIL' if bad else 'PASS',
                           '; '.join(bad) or f'{backend} FSDP2 steps; DCP resume repeats step 3',
                           metrics)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def count_flops(fn: Callable[[], None]) -> Dict[str, int]:
    """FLOPs of ``fn`` per operator, from ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): int(n) for op, n in counter.get_flop_counts().get('Global', {}).items()}


def expected_counted_train_flops(shape: ViTShape, batch: int, img_size: int,
                                 counts: Dict[str, int]) -> int:
    """What ``flop_counter`` should count for one training step of the model.

    The model-FLOPs convention (:func:`vit_train_flops`) differs from the counter in two
    ways: the counter skips the input gradient of the patch embedding (images need none),
    and a fused attention backward (flash / memory-efficient / cuDNN) recomputes the
    scores ``q k^T``, which the counter adds (half the attention forward FLOPs).
    """
    expected = vit_train_flops(shape, batch, img_size) - patch_embed_flops(shape, batch,
                                                                          img_size)
    if any('scaled_dot_product' in op and 'backward' in op for op in counts):
        expected += vit_attention_flops(shape, batch, img_size) // 2
    return expected


def check_train_throughput(args: argparse.Namespace, device: torch.device, label: str,
                           arch: str, batch: int, peak: Optional[float]) -> CheckResult:
    """bf16 training steps of a backbone: img/s, model TFLOP/s, MFU."""
    from backbone_speed import build_dino_mm
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the GPU: no slow CPU init of big models
        model = build_dino_mm(arch, args.img_size).train()
    shape = vit_shape(model)
    flops = vit_train_flops(shape, batch, args.img_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=device)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = _token_loss(model, x)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        train_step()
    # cross-check on the SDPA path (flop_counter does not see xFormers kernels)
    paths = [b.attn.use_xformers for b in model._flat_blocks()]
    for b in model._flat_blocks():
        b.attn.use_xformers = False
    counts = count_flops(train_step)
    for b, use in zip(model._flat_blocks(), paths):
        b.attn.use_xformers = use
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        train_step()
    _sync(device)
    sec = (time.perf_counter() - start) / args.iters
    util = mfu(flops, sec, peak)
    ratio = sum(counts.values()) / expected_counted_train_flops(shape, batch, args.img_size,
                                                                 counts)
    metrics = dict(arch=arch, batch=batch, img_s=batch / sec, s_per_step=sec,
                   model_tflop_per_step=flops / 1e12, tflop_s=flops / sec / 1e12,
                   mfu=util if util is not None else 'n/a (unknown GPU: pass --peak-tflops)',
                   flop_counter_over_formula=ratio,
                   peak_mem_gib=_peak_gib(device))
    bad = [] if abs(ratio - 1) < 5e-3 else [f'flop_counter counts x{ratio:.4f} the formula']
    return CheckResult(f'train {label}', 'FAIL' if bad else 'PASS',
                       '; '.join(bad) or f'{batch / sec:.1f} img/s, MFU '
                       f'{"n/a" if util is None else f"{util:.1%}"}', metrics)


def check_timm_forward(args: argparse.Namespace, device: torch.device) -> CheckResult:
    """dino_mm vs timm backbone forward, same weights and batch, interleaved timing."""
    from backbone_speed import _forward, build_dino_mm, build_other
    torch.manual_seed(0)
    ours = build_dino_mm(args.timm_arch, args.img_size)
    official = {k: v.clone() for k, v in ours.state_dict().items()}
    theirs, converted = build_other('timm', args.timm_arch, args.img_size, official)
    theirs.load_state_dict(converted, strict=True)
    models = {'dino_mm': ours.to(device).eval(), 'timm': theirs.to(device).eval()}
    x = torch.randn(args.timm_batch, 3, args.img_size, args.img_size, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        outs = {k: _forward(k, m, x).float() for k, m in models.items()}
        for _ in range(args.warmup):
            for k, m in models.items():
                _forward(k, m, x)
        times = interleaved_ms(device, {k: functools.partial(_forward, k, m, x)
                                        for k, m in models.items()},
                               args.rounds, args.round_iters)
    rel = _max_rel(outs['dino_mm'], outs['timm'])
    metrics = {'arch': args.timm_arch, 'batch': args.timm_batch, 'output rel diff': rel}
    for k, ms in times.items():
        metrics[f'{k} ms/iter min/median/max'] = spread(ms)
        metrics[f'{k} img/s (median)'] = args.timm_batch * 1000 / spread(ms)['median']
    speed = spread(times['timm'])['median'] / spread(times['dino_mm'])['median']
    metrics['dino_mm/timm speed (median)'] = speed
    ok = rel < 5e-2  # bf16 autocast, different attention kernels
    return CheckResult('forward vs timm', 'PASS' if ok else 'FAIL',
                       f'dino_mm x{speed:.3f} timm speed' if ok else
                       f'outputs differ (max rel {rel:.3g})', metrics)


def _run(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        result = CheckResult(name, 'FAIL', f'{type(exc).__name__}: {exc}',
                             {'traceback': traceback.format_exc(limit=6).strip()[-1500:]})
    result.seconds = time.perf_counter() - start
    gc.collect()  # the check's models are garbage now; give their GPU memory back
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f'[gpu_check] {result.name}: {result.status} ({result.seconds:.1f}s) '
          f'{result.detail}', flush=True)
    return result


def run_checks(args: argparse.Namespace, device: torch.device,
               peak: Optional[float]) -> List[CheckResult]:
    """Run the checks selected by ``--only`` on ``device``, in the documented order."""
    results = []
    if 'xformers' in args.only:
        results.append(_run('xformers', lambda: check_xformers(args, device)))
    if 'amp' in args.only:
        results.append(_run('amp-bf16', lambda: check_amp(args, device, torch.bfloat16)))
        results.append(_run('amp-fp16', lambda: check_amp(args, device, torch.float16)))
    if 'fp8' in args.only:
        results.append(_run('fp8', lambda: check_fp8(args, device)))
    if 'fsdp' in args.only:
        results.append(_run('fsdp-dcp', lambda: check_fsdp_dcp(args, device)))
        results.append(_run('fsdp-fp16-dcp', lambda: check_fsdp_dcp(args, device, fp16=True)))
    if 'throughput' in args.only:
        for label, arch in TRAIN_ARCHS:
            batch = args.vitl_batch if label == 'ViT-L/16' else args.vitg_batch
            results.append(_run(f'train {label}', lambda label=label, arch=arch, batch=batch:
                                check_train_throughput(args, device, label, arch, batch,
                                                       peak)))
    if 'timm' in args.only:
        results.append(_run('forward vs timm', lambda: check_timm_forward(args, device)))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        require_cuda()
    except CudaMissingError as exc:
        print(f'gpu_check: FAILED: {exc}', file=sys.stderr)
        return 2
    start = time.perf_counter()
    env = environment()
    peak = peak_bf16_tflops(str(env.get('device', '')), args.peak_tflops)
    env['peak_bf16_tflops'] = (peak if peak is not None else
                               'unknown (pass --peak-tflops for MFU)')
    device = torch.device('cuda', torch.cuda.current_device())
    results = run_checks(args, device, peak)
    env['total_seconds'] = round(time.perf_counter() - start, 1)
    report = format_report(results, env)
    print(report)
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(env=env, results=[asdict(r) for r in results]), f, indent=1,
                      default=str)
    return exit_code(results)


if __name__ == '__main__':
    sys.exit(main())
