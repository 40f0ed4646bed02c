"""fp32 vs bf16 feature extraction on CPU: throughput, and k-NN accuracy on the demo digits.

1. Throughput: a DINOv2 ViT (random weights: speed does not depend on them) extracts
   class-token features of ``--batch`` images at ``--size`` px through
   :func:`dino_mm.evaluation.extract_features` with ``precision='fp32'`` and ``'bf16'``.
   The two are timed in interleaved rounds in one process (order swapped every round),
   so a load change on a shared machine hits both alike; each round times ``--iters``
   batches per precision after one warm-up batch each. Reported: images/s min / median /
   max over rounds, and the ratio of the medians.
2. Accuracy: k-NN top-1 (official protocol, T = 0.07) on the demo's digits
   (``data/digits``, built by ``tools/demo.py``) with the features of the demo backbone
   extracted both ways. ``--checkpoint`` takes a checkpoint of the demo pretraining
   (``work_dirs/demo_dinov2/iter_400.pth``; the teacher backbone is used); without it the
   demo architecture at random init is used (features with less structure, so more
   near-tie votes).

Example (the figures in benchmarks/README.md)::

    python benchmarks/bf16_cpu.py --arch dinov2_vitb14 --batch 8 --rounds 5 --iters 2 \\
        --checkpoint work_dirs/demo_dinov2/iter_400.pth

Prints a summary and one JSON line. Figures on a CPU without native bf16 (no
``avx512_bf16`` / ``amx_bf16``) are slower in bf16: PyTorch emulates it.
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'dinov2_vit-tiny_digits.py')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='dinov2_vitb14',
                   help='backbone timed for throughput (default: %(default)s)')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--iters', type=int, default=2, help='batches per precision and round')
    p.add_argument('--data-root', default=osp.join(ROOT, 'data', 'digits'))
    p.add_argument('--checkpoint', default=None,
                   help='demo pretraining checkpoint (teacher backbone used for k-NN)')
    p.add_argument('--ks', type=int, nargs='+', default=[10, 20])
    p.add_argument('--skip-knn', action='store_true')
    return p.parse_args(argv)


def _loader(images: torch.Tensor, labels: torch.Tensor, batch: int):
    from torch.utils.data import DataLoader, TensorDataset
    return DataLoader(TensorDataset(images, labels, torch.arange(len(labels))),
                      batch_size=batch, shuffle=False)


def throughput(arch: str, size: int, batch: int, rounds: int, iters: int) -> Dict:
    """Interleaved fp32 / bf16 rounds of ``extract_features``; images/s per round."""
    from dino_mm.evaluation import extract_features
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    torch.manual_seed(0)
    kwargs = dict(img_size=size) if arch.startswith('dinov2') else {}
    model = DinoVisionTransformer(arch=arch, **kwargs)
    model.init_weights()
    model.eval()
    images = torch.randn(batch * iters, 3, size, size)
    loader = _loader(images, torch.zeros(len(images), dtype=torch.long), batch)
    warm = _loader(images[:batch], torch.zeros(batch, dtype=torch.long), batch)
    speeds: Dict[str, List[float]] = {'fp32': [], 'bf16': []}
    for precision in speeds:  # warm-up (oneDNN kernel selection, weight caches)
        extract_features(model, warm, precision=precision, progress=False)
    for r in range(rounds):
        order = ('fp32', 'bf16') if r % 2 == 0 else ('bf16', 'fp32')
        for precision in order:
            t0 = time.perf_counter()
            extract_features(model, loader, precision=precision, progress=False)
            speeds[precision].append(len(images) / (time.perf_counter() - t0))
    out = {p: dict(min=min(v), median=statistics.median(v), max=max(v), rounds=v)
           for p, v in speeds.items()}
    out['ratio_of_medians'] = out['bf16']['median'] / out['fp32']['median']
    return out


def demo_backbone(checkpoint: Optional[str]) -> torch.nn.Module:
    """The demo config's backbone: the teacher of ``checkpoint``, or random init."""
    from mmengine.config import Config

    from dino_mm.registry import MODELS
    from dino_mm.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(DEMO_CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if checkpoint is not None:
        from dino_mm.engine.checkpoint import safe_torch_load
        model.load_state_dict(safe_torch_load(checkpoint)['state_dict'], strict=True)
    return model.teacher['backbone'].eval()


def knn_both_ways(data_root: str, checkpoint: Optional[str], ks: List[int]) -> Dict:
    """k-NN top-1 on the demo digits with fp32 and with bf16 features."""
    import importlib.util

    from dino_mm.evaluation import extract_features, knn_evaluate
    spec = importlib.util.spec_from_file_location('dino_mm_demo',
                                                  osp.join(ROOT, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    if not osp.isfile(osp.join(data_root, 'extra', 'entries-VAL.npy')):
        demo.ensure_dataset(data_root, 32)
    train, val = demo.load_split(data_root, 'TRAIN'), demo.load_split(data_root, 'VAL')
    backbone = demo_backbone(checkpoint)
    out: Dict = dict(backbone='demo teacher ' + checkpoint if checkpoint else
                     'demo architecture, random init', num_train=len(train[1]),
                     num_val=len(val[1]))
    feats = {}
    for precision in ('fp32', 'bf16'):
        ftr, ytr = extract_features(backbone, _loader(*train, 256), precision=precision,
                                    progress=False)
        fva, yva = extract_features(backbone, _loader(*val, 256), precision=precision,
                                    progress=False)
        feats[precision] = fva
        res = knn_evaluate(ftr, ytr, fva, yva, ks=ks, temperature=0.07, topk=(1, ))
        out[precision] = {k: res[f'{k}nn_top1'] for k in ks}
    out['max_abs_diff_points'] = max(abs(out['bf16'][k] - out['fp32'][k]) for k in ks)
    ref = feats['fp32']
    out['feature_rel_l2_diff'] = float(((feats['bf16'] - ref).norm(dim=1) /
                                        ref.norm(dim=1)).mean())
    return out


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    from dino_mm.utils.precision import cpu_bf16_flags
    result = dict(arch=args.arch, size=args.size, batch=args.batch, rounds=args.rounds,
                  iters=args.iters, threads=torch.get_num_threads(),
                  torch=torch.__version__, cpu_bf16_flags=list(cpu_bf16_flags()))
    result['throughput'] = throughput(args.arch, args.size, args.batch, args.rounds,
                                      args.iters)
    if not args.skip_knn:
        result['knn'] = knn_both_ways(args.data_root, args.checkpoint, args.ks)
    t = result['throughput']
    print(f"{args.arch} @ {args.size}px, batch {args.batch}, {args.rounds} interleaved "
          f"rounds x {args.iters} batches, {result['threads']} threads, native bf16 flags: "
          f"{', '.join(result['cpu_bf16_flags']) or 'none'}")
    for p in ('fp32', 'bf16'):
        print(f"  {p}: {t[p]['median']:.2f} img/s (min {t[p]['min']:.2f}, max "
              f"{t[p]['max']:.2f})")
    print(f"  bf16 / fp32 (medians): x{t['ratio_of_medians']:.2f}")
    if 'knn' in result:
        k = result['knn']
        print(f"k-NN top-1 on the digits ({k['num_val']} val / {k['num_train']} train, "
              f"{k['backbone']}):")
        for p in ('fp32', 'bf16'):
            print(f'  {p}: ' + ', '.join(f'k={kk}: {v:.2f}%' for kk, v in k[p].items()))
        print(f"  max |bf16 - fp32|: {k['max_abs_diff_points']:.2f} points; features differ "
              f"by {100 * k['feature_rel_l2_diff']:.2f}% (relative L2)")
        if args.checkpoint is None:
            print('  (random init: its k-NN is near chance, 10 %; pass --checkpoint with the '
                  'demo pretraining checkpoint for meaningful figures)')
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
