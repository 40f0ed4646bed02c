"""Where one dino_mm DINOv2 pretraining step spends its time, phase by phase.

    python benchmarks/ssl_step_profile.py [--arch dinov2_vits14] [--batch 4] [--iters 5]

Runs the step the MMEngine runner executes (``DINOv2.train_step`` then ``update_teacher``)
on the batch of ``benchmarks/ssl_step.py`` (real photographs, 2 global + 8 local crops) and
times each phase by wrapping the method that does it (CPU: every call is synchronous, so
wall-clock around a call is its cost; on CUDA the wrappers synchronise):

teacher pass (backbone + heads + centring), student backbone, student heads, losses
(DINO, iBOT, KoLeo), backward, gradient clipping, optimizer step, EMA, and the rest (data
checks, logging). Prints min / median / max per phase over ``--iters`` timed steps and the
share of the median step. The phases that dominate are where a faster step must come from.
"""
import argparse
import os.path as osp
import statistics
import sys
import time
from collections import defaultdict

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))

PHASES = ('teacher pass', 'student backbone', 'student heads', 'losses', 'backward',
          'gradient clipping', 'optimizer step', 'EMA update')


def parse_args(argv=None):
    from ssl_step import parse_args as step_args
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', default='dinov2_vits14')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=None)
    args = p.parse_args(argv)
    full = step_args(['--arch', args.arch, '--batch', str(args.batch)])
    for k in ('iters', 'warmup', 'threads'):
        setattr(full, k, getattr(args, k))
    return full


class PhaseTimer:
    """Accumulates wall-clock per phase for the current step (nested calls excluded)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current = defaultdict(float)
        self.depth = 0

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def wrap(self, obj, name: str, phase: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            if self.depth:  # inside another timed phase: counted there
                return fn(*args, **kwargs)
            self.depth += 1
            self._sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.current[phase] += time.perf_counter() - t0
                self.depth -= 1
        setattr(obj, name, timed)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ssl_step import DinoMMStep, build_batch, build_model
    device = torch.device(args.device)
    model = build_model(args)
    impl = DinoMMStep(model, device)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in build_batch(args).items()}
    timer = PhaseTimer(device)
    m = impl.model
    timer.wrap(m, 'teacher_output', 'teacher pass')
    timer.wrap(m.student.backbone, 'forward_features', 'student backbone')
    timer.wrap(m.student.dino_head, 'forward', 'student heads')
    for loss in ('dino_loss', 'ibot_patch_loss', 'koleo_loss'):
        mod = getattr(m, loss, None)
        if mod is not None:
            for method in ('forward', 'forward_masked'):
                if hasattr(mod, method):
                    timer.wrap(mod, method, 'losses')
    ow = impl.optim_wrapper
    timer.wrap(ow, 'backward', 'backward')
    timer.wrap(m, 'clip_gradients', 'gradient clipping')
    timer.wrap(ow, 'step', 'optimizer step')
    timer.wrap(m, 'update_teacher', 'EMA update')
    per_phase = defaultdict(list)
    for i in range(args.warmup + args.iters):
        timer.current = defaultdict(float)
        impl.free_grads()
        t0 = time.perf_counter()
        impl.step(dict(batch))
        total = time.perf_counter() - t0
        if i < args.warmup:
            continue
        for phase in PHASES:
            per_phase[phase].append(timer.current[phase])
        per_phase['rest'].append(total - sum(timer.current.values()))
        per_phase['step'].append(total)
    med_step = statistics.median(per_phase['step'])
    print(f'dino_mm DINOv2 step, {args.arch}, batch {args.batch}, 2x{args.global_size} + '
          f'{args.n_local}x{args.local_size} crops, {args.prototypes} prototypes, '
          f'{torch.get_num_threads()} threads, {args.iters} timed steps')
    print('| phase | median ms | min ms | max ms | share of median step |')
    print('|---|---|---|---|---|')
    for phase in PHASES + ('rest', 'step'):
        vals = per_phase[phase]
        med = statistics.median(vals)
        print(f'| {phase} | {med * 1e3:.0f} | {min(vals) * 1e3:.0f} | {max(vals) * 1e3:.0f} | '
              f'{100 * med / med_step:.1f} % |')
    return per_phase


if __name__ == '__main__':
    main()
