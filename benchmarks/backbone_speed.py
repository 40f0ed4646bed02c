"""Throughput and peak memory of dino_mm backbones vs timm and HF transformers.

All three implementations run the SAME architecture with the SAME weights: one random
official-layout state dict is converted with ``dino_mm.models.converters`` and loaded
strictly into each model, and the outputs are compared before timing. Each
implementation runs in its own fresh process so peak-memory figures do not mix.

CPU fp32 by default; on a CUDA machine the models run under bf16 autocast.

Example::

    python benchmarks/backbone_speed.py --arch dinov2_vitb14 --batch 8 --size 224 \\
        --iters 10 --warmup 3
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMPLS = ('dino_mm', 'timm', 'hf')
_V2_TIMM = {'s': 'vit_small_patch14', 'b': 'vit_base_patch14', 'l': 'vit_large_patch14',
            'g': 'vit_giant_patch14'}
_V3_TIMM = {'vits16': 'vit_small_patch16_dinov3_qkvb',
            'vits16plus': 'vit_small_plus_patch16_dinov3_qkvb',
            'vitb16': 'vit_base_patch16_dinov3_qkvb',
            'vitl16': 'vit_large_patch16_dinov3_qkvb',
            'vitl16plus': None,  # timm has no ViT-L+ DINOv3 definition
            'vith16plus': 'vit_huge_plus_patch16_dinov3_qkvb',
            'vit7b16': 'vit_7b_patch16_dinov3'}


def build_dino_mm(arch: str, size: int) -> torch.nn.Module:
    if 'convnext' in arch:
        from dino_mm.models.backbones.convnext import DinoConvNeXt
        return DinoConvNeXt(arch=arch)
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    # img_size = input size: no position-embedding interpolation in any implementation,
    # so all three compute exactly the same function.
    kwargs = dict(img_size=size) if arch.startswith('dinov2') else {}
    return DinoVisionTransformer(arch=arch, **kwargs)


def build_other(impl: str, arch: str, size: int, official: Dict[str, torch.Tensor]
                ) -> Tuple[torch.nn.Module, Dict[str, torch.Tensor]]:
    """timm / HF model of ``arch`` and the converted state dict to load into it."""
    import timm
    import transformers as tf

    from dino_mm.models.converters import convert_state_dict
    sd = convert_state_dict(official, to=impl)
    ref = build_dino_mm(arch, size) if 'convnext' in arch else None
    if 'convnext' in arch:
        size_name = arch.rsplit('_', 1)[1]
        if impl == 'timm':
            return timm.create_model(f'convnext_{size_name}', num_classes=0), sd
        cfg = tf.DINOv3ConvNextConfig(depths=ref.depths, hidden_sizes=ref.embed_dims)
        return tf.DINOv3ConvNextModel(cfg), sd
    dim = official['cls_token'].shape[-1]
    depth = 1 + max(int(k.split('.')[1]) for k in official if k.startswith('blocks.'))
    heads = {384: 6, 768: 12, 1024: 16, 1280: 20, 1536: 24, 4096: 32}[dim]
    fc1 = next(v for k, v in official.items() if k.endswith(('mlp.fc1.weight', 'mlp.w1.weight',
                                                              'mlp.w12.weight')))
    swiglu = not any(k.endswith('mlp.fc1.weight') for k in official)
    hidden = fc1.shape[0] // (2 if any(k.endswith('w12.weight') for k in official) else 1)
    if arch.startswith('dinov2'):
        reg = arch.endswith('_reg')
        if impl == 'timm':
            name = _V2_TIMM[arch.split('_vit')[1][0]] + ('_reg4' if reg else '') + '_dinov2'
            extra = dict(mlp_ratio=2 * hidden / dim) if swiglu else {}
            return timm.create_model(name, img_size=size, num_classes=0, **extra), sd
        cfg_cls = tf.Dinov2WithRegistersConfig if reg else tf.Dinov2Config
        model_cls = tf.Dinov2WithRegistersModel if reg else tf.Dinov2Model
        cfg = cfg_cls(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                      image_size=size, patch_size=14, mlp_ratio=4, layer_norm_eps=1e-6,
                      use_swiglu_ffn=swiglu)
        return model_cls(cfg), sd
    key = arch.split('dinov3_')[1]
    if impl == 'timm':
        if _V3_TIMM[key] is None:
            raise NotImplementedError(f'timm defines no model for {arch}.')
        extra = dict(mlp_ratio=hidden / dim) if swiglu else {}
        return timm.create_model(_V3_TIMM[key], num_classes=0, dynamic_img_size=True,
                                 **extra), sd
    cfg = tf.DINOv3ViTConfig(hidden_size=dim, num_hidden_layers=depth,
                             num_attention_heads=heads, intermediate_size=hidden,
                             use_gated_mlp=swiglu, hidden_act='silu' if swiglu else 'gelu',
                             num_register_tokens=4, layer_norm_eps=1e-5,
                             query_bias='blocks.0.attn.qkv.bias' in official,
                             value_bias='blocks.0.attn.qkv.bias' in official)
    return tf.DINOv3ViTModel(cfg), sd


def _forward(impl: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised class token / pooled feature of each implementation."""
    if impl == 'dino_mm':
        return model(x)
    if impl == 'timm':
        out = model.forward_features(x)
        return out[:, 0] if out.ndim == 3 else model.forward_head(out)
    return model(pixel_values=x).pooler_output if hasattr(model, 'stages') or \
        'ConvNext' in type(model).__name__ else model(pixel_values=x).last_hidden_state[:, 0]


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: ``5 > /proc/self/clear_refs``),
    so the peak measured afterwards belongs to inference, not to model loading."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def worker(args: argparse.Namespace) -> None:
    """Child process: load one implementation, time it, print a JSON line."""
    device = torch.device(args.device)
    official = torch.load(args.weights, map_location='cpu', weights_only=True)
    if args.worker == 'dino_mm':
        model = build_dino_mm(args.arch, args.size)
        model.load_state_dict(official, strict=True)
    else:
        model, sd = build_other(args.worker, args.arch, args.size, official)
        model.load_state_dict(sd, strict=True)
    del official
    model = model.eval().to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    use_bf16 = device.type == 'cuda' and args.dtype == 'bf16'
    ctx = (torch.autocast('cuda', dtype=torch.bfloat16) if use_bf16
           else torch.autocast('cpu', enabled=False))
    hwm_reset = device.type == 'cpu' and _reset_peak_rss()
    rss0 = (_rss_kib('VmRSS') if hwm_reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    with torch.inference_mode(), ctx:
        out = _forward(args.worker, model, x).float().cpu()
        for _ in range(args.warmup):
            _forward(args.worker, model, x)
        if device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        for _ in range(args.iters):
            _forward(args.worker, model, x)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    if device.type == 'cuda':
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    elif hwm_reset:
        # Peak resident memory of the forward passes on top of the loaded model.
        peak_mb = (_rss_kib('VmHWM') - rss0) / 1024
    else:  # no resettable counter: growth of the process high-water mark
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    torch.save(out, args.weights + f'.{args.worker}.out')
    print(json.dumps(dict(impl=args.worker, img_s=args.batch * args.iters / elapsed,
                          ms_iter=1000 * elapsed / args.iters, peak_mb=peak_mb)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='dinov2_vitb14',
                        help='dinov2_vit{s,b,l,g}14[_reg], dinov3_vit{s16,s16plus,b16,l16,'
                        'l16plus,h16plus,7b16}, dinov3_convnext_{tiny,small,base,large}')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default=None, choices=['fp32', 'bf16'],
                        help='fp32 on CPU, bf16 autocast on CUDA by default')
    parser.add_argument('--impls', default=','.join(IMPLS))
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--weights', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = 'bf16' if args.device.startswith('cuda') else 'fp32'
    if args.worker:
        worker(args)
        return

    torch.manual_seed(0)
    model = build_dino_mm(args.arch, args.size)
    official = model.state_dict()
    for k, v in official.items():  # move layer scales / norms away from their init
        if v.is_floating_point() and not k.endswith(('bias_mask', 'periods')) and v.ndim == 1:
            v.add_(torch.randn_like(v) * 0.1)
    del model
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, 'official.pth')
        torch.save({k: v.clone() for k, v in official.items()}, weights)
        for impl in args.impls.split(','):
            cmd = [sys.executable, os.path.abspath(__file__), '--worker', impl, '--weights',
                   weights] + [f'--{k}={getattr(args, k)}' for k in
                               ('arch', 'batch', 'size', 'iters', 'warmup', 'device', 'dtype')]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(f'{impl}: failed\n{res.stderr[-2000:]}', file=sys.stderr)
                continue
            results[impl] = json.loads(res.stdout.strip().splitlines()[-1])
            results[impl]['out'] = torch.load(weights + f'.{impl}.out', weights_only=True)
    print(f'arch={args.arch} batch={args.batch} size={args.size} device={args.device} '
          f'dtype={args.dtype} iters={args.iters} warmup={args.warmup} '
          f'threads={torch.get_num_threads()} torch={torch.__version__}')
    print(f'{"impl":8s} {"img/s":>9s} {"ms/iter":>9s} {"peak MB":>9s} {"max|diff|":>10s}')
    ref = results.get('dino_mm')
    for impl, r in results.items():
        diff = (r['out'] - ref['out']).abs().max().item() if ref else float('nan')
        print(f'{impl:8s} {r["img_s"]:9.2f} {r["ms_iter"]:9.1f} {r["peak_mb"]:9.1f} '
              f'{diff:10.2e}')
    if ref:
        for other in ('timm', 'hf'):
            if other in results:
                o = results[other]
                print(f'dino_mm/{other}: speed x{ref["img_s"] / o["img_s"]:.3f}, '
                      f'peak memory x{ref["peak_mb"] / max(o["peak_mb"], 1e-6):.3f}')


if __name__ == '__main__':
    main()
