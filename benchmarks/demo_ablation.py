"""Ablation of the embedded demo's recipe: one difference at a time, kNN after each run.

    python benchmarks/demo_ablation.py [--only NAME ...] [--max-iters N] [--peer]

Each row runs ``tools/demo.py`` (the door a user takes) in its own process with the demo
config and a set of ``--cfg-options``, and reads the kNN top-1 (k=10 / k=20, teacher class
token, T=0.07) it prints. ``--peer`` adds the lightly-pieces loop
(``benchmarks/lightly_peer.py``) and the raw-pixel kNN, on the same data, batch and
iterations. Runs are sequential (each uses both cores); the table is printed at the end and
written to ``work_dirs/demo_ablation/table.md``.

The rows start from the official recipe (``official``: the DINOv2 defaults shrunk to the
demo's model and crops) and change one thing at a time; ``demo`` is the shipped demo config.
"""
import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Rows: the official DINOv2 recipe at the demo's model / crop size, then one change at a
# time (the ``ls1_`` rows start from layerscale 1.0, the first change that matters).
CROP = 'train_dataloader.dataset.pipeline.1.'
# The official recipe at the demo's model / crop size and 400 iterations (the demo config
# before the ablation): it undoes every change the shipped demo config makes.
OFFICIAL = [
    'train_cfg.max_iters=400', 'model.backbone.layerscale_init=1e-5',
    'model.dino_head.out_dim=1024', CROP + 'global_crops_scale=(0.32,1.0)',
    CROP + 'local_crops_scale=(0.05,0.32)', CROP + 'official_blur_quirk=True',
    CROP + 'blur_probabilities=(1.0,0.1,0.5)', CROP + 'solarize_probability=0.2',
    'default_hooks.checkpoint.interval=100',
]
LS1 = OFFICIAL + ['model.backbone.layerscale_init=1.0']
EASY_CROPS = [CROP + 'global_crops_scale=(0.5,1.0)', CROP + 'local_crops_scale=(0.2,0.5)']
NO_BLUR = [CROP + 'blur_probabilities=(0.0,0.0,0.0)', CROP + 'official_blur_quirk=False',
           CROP + 'solarize_probability=0.0']
ROWS = {
    'official (400 it)': OFFICIAL,
    'lr x10': OFFICIAL + ['param_scheduler.0.base_value=0.04'],
    'no iBOT': OFFICIAL + ['model.ibot_loss_weight=0.0'],
    'no KoLeo': OFFICIAL + ['model.koleo_loss_weight=0.0'],
    'no masking': OFFICIAL + ['train_dataloader.collate_fn.mask_probability=0.0'],
    'layerscale 1.0': LS1,
    'ls1 + teacher temp 0.04': LS1 + ['custom_hooks.0.teacher_temp=0.04'],
    'ls1 + momentum 0.9': LS1 + ['custom_hooks.1.momentum_teacher=0.9'],
    'ls1 + lr x10': LS1 + ['param_scheduler.0.base_value=0.04'],
    'ls1 + Sinkhorn-Knopp': LS1 + ['model.centering=sinkhorn_knopp'],
    'ls1 + 256 prototypes': LS1 + ['model.dino_head.out_dim=256'],
    'ls1 + 64 prototypes': LS1 + ['model.dino_head.out_dim=64'],
    'ls1 + 64 + SK': LS1 + ['model.dino_head.out_dim=64', 'model.centering=sinkhorn_knopp'],
    'ls1 + 64 + BN head': LS1 + ['model.dino_head.out_dim=64', 'model.dino_head.use_bn=True'],
    'ls1 + BN head': LS1 + ['model.dino_head.use_bn=True'],
    'ls1 + 64 + crops/no blur': LS1 + ['model.dino_head.out_dim=64'] + EASY_CROPS + NO_BLUR,
    'ls1 + 64 + teacher temp 0.02': LS1 + [
        'model.dino_head.out_dim=64', 'custom_hooks.0.warmup_teacher_temp=0.02',
        'custom_hooks.0.teacher_temp=0.02'],
    'ls1 + easier crops': LS1 + EASY_CROPS,
    'ls1 + easier crops, no blur/solarize': LS1 + EASY_CROPS + NO_BLUR,
    'ls1 + 64 + KoLeo 0.5': LS1 + ['model.dino_head.out_dim=64', 'model.koleo_loss_weight=0.5'],
    'ls1 + 64 + KoLeo 0.5 + crops/no blur': LS1 + [
        'model.dino_head.out_dim=64', 'model.koleo_loss_weight=0.5'] + EASY_CROPS + NO_BLUR,
    'ls1 + 64 + crops/no blur, 1200 it': LS1 + [
        'model.dino_head.out_dim=64', 'train_cfg.max_iters=1200'] + EASY_CROPS + NO_BLUR,
    'demo (shipped config, 1000 it)': [],
}


def run_demo(name, options, max_iters, work_root, config=None):
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'demo.py'),
           '--work-dir', osp.join(work_root, name)]
    if config:
        cmd += ['--config', config]
    if max_iters:
        cmd += ['--max-iters', str(max_iters)]
    if options:
        cmd += ['--cfg-options'] + list(options)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.time() - t0
    m = re.search(r'pretrained \(teacher\)\s+([\d.]+)%\s+([\d.]+)%', out.stdout)
    rnd = re.search(r'random init\s+([\d.]+)%', out.stdout)
    if out.returncode not in (0, 1) or not m:
        raise RuntimeError(f'{name}: tools/demo.py failed (rc {out.returncode}):\n'
                           f'{out.stdout[-2000:]}\n{out.stderr[-2000:]}')
    return dict(k10=float(m.group(1)), k20=float(m.group(2)),
                random=float(rnd.group(1)) if rnd else float('nan'), seconds=seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--only', nargs='+', default=None, help='rows to run')
    p.add_argument('--max-iters', type=int, default=None)
    p.add_argument('--peer', action='store_true', help='add the lightly loop and raw pixels')
    p.add_argument('--work-root', default=osp.join(ROOT, 'work_dirs', 'demo_ablation'))
    args = p.parse_args(argv)
    os.makedirs(args.work_root, exist_ok=True)
    rows = {k: v for k, v in ROWS.items() if not args.only or k in args.only}
    results = {}
    for name, opts in rows.items():
        results[name] = run_demo(name, opts, args.max_iters, args.work_root)
        r = results[name]
        print(f'{name:<28} k=10 {r["k10"]:6.2f}%  k=20 {r["k20"]:6.2f}%  random '
              f'{r["random"]:6.2f}%  ({r["seconds"]:.0f} s)', flush=True)
    lines = ['| row | cfg-options | kNN k=10 | kNN k=20 | random init k=10 | wall s |',
             '|---|---|---|---|---|---|']
    for name, r in results.items():
        lines.append(f'| {name} | `{" ".join(rows[name]) or "-"}` | {r["k10"]:.2f} | '
                     f'{r["k20"]:.2f} | {r["random"]:.2f} | {r["seconds"]:.0f} |')
    if args.peer:
        sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
        from lightly_peer import main as peer_main
        t0 = time.time()
        peer = peer_main(['--max-iters', str(args.max_iters)] if args.max_iters else [])
        lines.append(f'| lightly peer | benchmarks/lightly_peer.py | {peer["peer"][10]:.2f} | '
                     f'{peer["peer"][20]:.2f} | - | {time.time() - t0:.0f} |')
        lines.append(f'| raw pixels | cosine kNN of the 32 px images | {peer["raw"][10]:.2f} | '
                     f'{peer["raw"][20]:.2f} | - | - |')
    table = '\n'.join(lines)
    print(table)
    with open(osp.join(args.work_root, 'table.md'), 'w') as f:
        f.write(table + '\n')


if __name__ == '__main__':
    main()
