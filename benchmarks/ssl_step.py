"""Time and peak memory of one DINOv2 pretraining step: dino_mm vs the official code.

The official trainer (``dinov2.train.SSLMetaArch``) imports xFormers unconditionally and
feeds the student its global and local crops as one nested-tensor list, which only
xFormers can run, so it cannot run on a CPU machine. The official side here is therefore
the official step rebuilt from the official *modules* of the ``dinov2`` package
(``vit_small`` ... ``vit_giant2``: ``NestedTensorBlock`` + ``MemEffAttention``, ``DINOHead``,
``DINOLoss``, ``iBOTPatchLoss``, ``KoLeoLoss``): the same teacher pass, the same student
pass with the crop lists run one element at a time (what xFormers' block-diagonal
attention computes), the same head calls on concatenated tokens, the same losses, then
backward, per-module gradient clipping (3.0), AdamW and the EMA teacher update written as
in ``SSLMetaArch``. The dino_mm side is ``DINOv2.train_step`` + ``update_teacher``, i.e.
what the MMEngine runner executes.

Both sides start from the same weights (the dino_mm model's state dict is loaded strictly
into the official modules) and get the same batch (real scikit-image photographs through
``DINOMultiCrop`` + ``dino_collate``); the first step's loss terms are compared before
timing. Drop path is off on both sides (the official batch-subset drop path draws random
numbers differently, which would break the loss comparison).

* time: both implementations in one process, their steps alternated ``--iters`` times;
  the minimum per implementation is reported with the median (on a shared machine the
  load changes a step's time several-fold; alternating exposes both sides to it equally);
* peak memory: each implementation alone in its own process, the process peak RSS during
  a step minus the RSS before it with weights, optimizer state and batch allocated but no
  gradients (CPU; glibc is told to mmap large blocks so RSS follows live tensors), or
  ``torch.cuda.max_memory_allocated`` minus the memory held before the step (CUDA).

Rows:

* ``step``: one full training step (teacher forward, student forward, heads, losses,
  backward, clipping, AdamW, EMA);
* ``backbone fwd+bwd``: the student backbone alone on the same crops (global crops with
  the iBOT masks, local crops without), backward of the sum of the class and patch tokens.

Example::

    python benchmarks/ssl_step.py --arch dinov2_vits14 --batch 4 --iters 5 --warmup 1
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMPLS = ('dino_mm', 'official')
_OFFICIAL_VIT = {'dinov2_vits14': 'vit_small', 'dinov2_vitb14': 'vit_base',
                 'dinov2_vitl14': 'vit_large', 'dinov2_vitg14': 'vit_giant2'}


# ----------------------------------------------------------------------------- shared
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='dinov2_vits14', choices=sorted(_OFFICIAL_VIT))
    parser.add_argument('--batch', type=int, default=4, help='images per step')
    parser.add_argument('--global-size', type=int, default=224)
    parser.add_argument('--local-size', type=int, default=98)
    parser.add_argument('--n-local', type=int, default=8, help='local crops per image')
    parser.add_argument('--prototypes', type=int, default=65536,
                        help='DINO head prototypes (official default 65536)')
    parser.add_argument('--hidden', type=int, default=2048, help='DINO head hidden dim')
    parser.add_argument('--bottleneck', type=int, default=256, help='DINO head bottleneck')
    parser.add_argument('--iters', type=int, default=5,
                        help='timed steps per implementation (alternated)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile every backbone block on the dino_mm side '
                        '(compile_backbone_blocks, what DINOFSDPStrategy(compile_blocks=True) '
                        'does); the compilation happens in the warm-up steps')
    parser.add_argument('--json', default=None, help='also write the results here')
    parser.add_argument('--worker', choices=IMPLS + ('time', ), help=argparse.SUPPRESS)
    parser.add_argument('--out', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _skip_task_registry_imports() -> None:
    """Everything built here is registered by ``import dino_mm``; stop the registry from
    importing its mmseg/mmdet ``locations`` (slow, and not needed for pretraining)."""
    import dino_mm  # noqa: F401
    from dino_mm.registry import MODELS
    MODELS._imported = True


def build_model(args: argparse.Namespace):
    """The dino_mm DINOv2 model; its weights are the starting point of both sides."""
    from dino_mm.models.algorithms import DINOv2
    _skip_task_registry_imports()
    torch.manual_seed(0)
    model = DINOv2(
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch=args.arch,
                      img_size=args.global_size, patch_size=14, drop_path_rate=0.0,
                      layerscale_init=1e-5, block_chunks=0),
        dino_head=dict(out_dim=args.prototypes, hidden_dim=args.hidden,
                       bottleneck_dim=args.bottleneck, nlayers=3),
        centering='centering', clip_grad=3.0)
    return model  # the constructors initialise; the teacher starts as a copy


def build_batch(args: argparse.Namespace) -> dict:
    """Official multi-crop batch of real photographs (same seed -> same batch)."""
    import random

    from PIL import Image
    from skimage import data

    from dino_mm.datasets import DINOMultiCrop, dino_collate
    names = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry', 'motorcycle_left')
    images = []
    for i in range(args.batch):
        name = names[i % len(names)]
        arr = getattr(data, name)() if name != 'motorcycle_left' else data.stereo_motorcycle()[0]
        images.append(Image.fromarray(arr).convert('RGB'))
    crop = DINOMultiCrop(local_crops_number=args.n_local, global_crops_size=args.global_size,
                         local_crops_size=args.local_size)
    torch.manual_seed(0)
    random.seed(0)
    samples = [crop({'img': img}) for img in images]
    return dino_collate(samples, patch_size=14)


# ----------------------------------------------------------------------------- official
class OfficialStep:
    """``SSLMetaArch.forward_backward`` + optimizer step + EMA, from the official modules."""

    def __init__(self, model, args: argparse.Namespace, device: torch.device) -> None:
        from dinov2.layers import DINOHead
        from dinov2.loss import DINOLoss, iBOTPatchLoss, KoLeoLoss
        from dinov2.models import vision_transformer as vits
        backbone = model.student.backbone

        def vit():
            ffn = 'swiglufused' if args.arch == 'dinov2_vitg14' else 'mlp'
            return getattr(vits, _OFFICIAL_VIT[args.arch])(
                img_size=args.global_size, patch_size=14, init_values=1e-5, ffn_layer=ffn,
                block_chunks=0, drop_path_rate=0.0)

        def head():
            return DINOHead(in_dim=backbone.embed_dim, out_dim=args.prototypes,
                            hidden_dim=args.hidden, bottleneck_dim=args.bottleneck, nlayers=3)

        self.student = torch.nn.ModuleDict(dict(backbone=vit(), dino_head=head()))
        self.teacher = torch.nn.ModuleDict(dict(backbone=vit(), dino_head=head()))
        self.student.load_state_dict(model.student.state_dict(), strict=True)
        self.teacher.load_state_dict(model.teacher.state_dict(), strict=True)
        self.student.to(device).train()
        self.teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.dino_loss = DINOLoss(args.prototypes).to(device)
        self.ibot_loss = iBOTPatchLoss(args.prototypes).to(device)
        self.koleo = KoLeoLoss()
        self.embed_dim = backbone.embed_dim
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-4,
                                           weight_decay=0.04)

    def losses(self, images: dict, teacher_temp: float = 0.07) -> Dict[str, torch.Tensor]:
        n_g = 2
        global_crops = images['collated_global_crops']
        local_crops = images['collated_local_crops']
        masks, mask_indices_list = images['collated_masks'], images['mask_indices_list']
        n_masked = mask_indices_list.shape[0]
        upperbound, masks_weight = images['upperbound'], images['masks_weight']
        n_l = local_crops.shape[0] // (global_crops.shape[0] // n_g)
        n_terms = max(n_l * n_g, 1) + (n_g - 1) * n_g
        dim = self.embed_dim

        with torch.no_grad():
            out = self.teacher.backbone(global_crops, is_training=True)
            cls_a, cls_b = out['x_norm_clstoken'].chunk(n_g)
            t_cls = torch.cat((cls_b, cls_a))
            n_cls = t_cls.shape[0]
            buf = global_crops.new_zeros(upperbound + n_cls, dim)
            buf[:n_cls].copy_(t_cls)
            torch.index_select(out['x_norm_patchtokens'].flatten(0, 1), 0, mask_indices_list,
                               out=buf[n_cls:n_cls + n_masked])
            tokens = self.teacher.dino_head(buf)
            t_cls_head, t_patch_head = tokens[:n_cls], tokens[n_cls:n_cls + n_masked]
            t_dino = self.dino_loss.softmax_center_teacher(
                t_cls_head, teacher_temp=teacher_temp).view(n_g, -1, t_cls_head.shape[-1])
            self.dino_loss.update_center(t_cls_head)
            t_ibot = self.ibot_loss.softmax_center_teacher(
                t_patch_head.unsqueeze(0), teacher_temp=teacher_temp).squeeze(0)
            self.ibot_loss.update_center(t_patch_head.unsqueeze(0))

        # xFormers would run [global, local] as one block-diagonal batch; without it the
        # list is run element by element, which is the same computation.
        s_global = self.student.backbone.forward_features(global_crops, masks)
        s_local = self.student.backbone.forward_features(local_crops, None)
        s_patch = global_crops.new_zeros(upperbound, dim)
        s_patch[:n_masked].copy_(torch.index_select(
            s_global['x_norm_patchtokens'].flatten(0, 1), 0, mask_indices_list))
        inputs = [s_local['x_norm_clstoken'], s_global['x_norm_clstoken'], s_patch]
        outs = self.student.dino_head(torch.cat(inputs)).split([t.shape[0] for t in inputs])
        s_local_head, s_global_head, s_patch_head = outs[0], outs[1], outs[2][:n_masked]
        return {
            'dino_local_crops_loss': self.dino_loss(s_local_head.chunk(n_l), t_dino) / n_terms,
            'dino_global_crops_loss': self.dino_loss(
                [s_global_head], [t_dino.flatten(0, 1)]) * 2 / n_terms,
            'koleo_loss': 0.1 * sum(self.koleo(p)
                                    for p in s_global['x_norm_clstoken'].chunk(n_g)),
            'ibot_loss': self.ibot_loss.forward_masked(
                s_patch_head, t_ibot, student_masks_flat=masks, n_masked_patches=n_masked,
                masks_weight=masks_weight) * 2 / n_g,
        }

    def step(self, images: dict) -> Dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.losses(images)
        sum(losses.values()).backward()
        for module in self.student.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        self.optimizer.step()
        with torch.no_grad():  # SSLMetaArch.update_teacher
            s = [p for k in self.student for p in self.student[k].parameters()]
            t = [p for k in self.teacher for p in self.teacher[k].parameters()]
            torch._foreach_mul_(t, 0.994)
            torch._foreach_add_(t, s, alpha=1 - 0.994)
        return {k: float(v.detach()) for k, v in losses.items()}

    def free_grads(self) -> None:
        self.student.zero_grad(set_to_none=True)

    def backbone_fwd_bwd(self, images: dict) -> None:
        self.student.zero_grad(set_to_none=True)
        g = self.student.backbone.forward_features(images['collated_global_crops'],
                                                   images['collated_masks'])
        loc = self.student.backbone.forward_features(images['collated_local_crops'], None)
        (g['x_norm_clstoken'].sum() + g['x_norm_patchtokens'].sum() +
         loc['x_norm_clstoken'].sum() + loc['x_norm_patchtokens'].sum()).backward()


# ----------------------------------------------------------------------------- dino_mm
class DinoMMStep:
    """What MMEngine's runner executes per iteration: ``train_step`` then the EMA hook."""

    def __init__(self, model, device: torch.device) -> None:
        from mmengine.optim import OptimWrapper
        self.model = model.to(device).train()
        self.optim_wrapper = OptimWrapper(torch.optim.AdamW(
            [p for p in model.student.parameters()], lr=1e-4, weight_decay=0.04))

    def losses(self, images: dict) -> Dict[str, torch.Tensor]:
        return self.model(**images, mode='loss')

    def step(self, images: dict) -> Dict[str, float]:
        log_vars = self.model.train_step(dict(images), self.optim_wrapper)
        self.model.update_teacher(0.994)
        return {k: float(v.detach()) for k, v in log_vars.items() if k.endswith('_loss')}

    def free_grads(self) -> None:
        self.model.student.zero_grad(set_to_none=True)

    def backbone_fwd_bwd(self, images: dict) -> None:
        self.model.student.zero_grad(set_to_none=True)
        g, loc = self.model.student.backbone.forward_features(
            [images['collated_global_crops'], images['collated_local_crops']],
            masks=[images['collated_masks'], None])
        (g['x_norm_clstoken'].sum() + g['x_norm_patchtokens'].sum() +
         loc['x_norm_clstoken'].sum() + loc['x_norm_patchtokens'].sum()).backward()


# ----------------------------------------------------------------------------- measuring
def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: ``5 > /proc/self/clear_refs``)."""
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


def _measure(fn: Callable[[], object], free_grads: Callable[[], None], iters: int,
             warmup: int, device: torch.device) -> Tuple[float, float, float]:
    """Median wall seconds and process CPU seconds per call, and peak memory (MiB) above
    the pre-call baseline.

    The baseline holds weights, optimizer state and batch but no gradients (the official
    loop frees them at the start of a step, dino_mm at the end), so the peak covers
    activations and gradients on both sides. CPU seconds (all threads of the process) are
    much less sensitive than wall-clock to other jobs on a shared machine.
    """
    for _ in range(warmup):
        fn()
    free_grads()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib('VmRSS') * 1024
        if not _reset_peak_rss():
            base = None
    times, cpu_times = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if device.type == 'cuda':
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (_rss_kib('VmHWM') * 1024 - base) / 2**20 if base is not None else float('nan')
    times.sort()
    cpu_times.sort()
    return times[len(times) // 2], cpu_times[len(cpu_times) // 2], peak


def _build_impl(name: str, model, args: argparse.Namespace, device: torch.device):
    if name == 'dino_mm':
        if args.compile:
            from dino_mm.engine.fsdp import compile_backbone_blocks
            for part in (model.student, model.teacher):
                compile_backbone_blocks(part['backbone'])
        return DinoMMStep(model, device)
    return OfficialStep(model, args, device)


def worker(args: argparse.Namespace) -> None:
    """Child process, JSON to --out.

    ``--worker dino_mm|official``: first-step losses and peak memory of one implementation
    (alone in its process). ``--worker time``: both implementations in one process, steps
    alternated ``--iters`` times after ``--warmup``; the minimum per implementation is the
    least disturbed figure on a shared machine, and alternating exposes both to the same
    load drift.
    """
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in build_batch(args).items()}
    if args.worker != 'time':
        impl = _build_impl(args.worker, build_model(args), args, device)
        first = impl.step(batch)  # also the losses compared between the two processes
        _, _, step_mb = _measure(lambda: impl.step(batch), impl.free_grads, 1, args.warmup,
                                 device)
        _, _, bb_mb = _measure(lambda: impl.backbone_fwd_bwd(batch), impl.free_grads, 1,
                               args.warmup, device)
        result = dict(impl=args.worker, first_losses=first, step_mb=step_mb, backbone_mb=bb_mb)
    else:
        impls = {name: _build_impl(name, build_model(args), args, device) for name in IMPLS}
        result = {name: dict(step=[], backbone=[]) for name in IMPLS}
        for i in range(args.warmup + args.iters):
            for name in (IMPLS if i % 2 == 0 else IMPLS[::-1]):
                for key, fn in (('step', impls[name].step),
                                ('backbone', impls[name].backbone_fwd_bwd)):
                    impls[name].free_grads()
                    t0 = time.perf_counter()
                    fn(batch)
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    if i >= args.warmup:
                        result[name][key].append(time.perf_counter() - t0)
        result['threads'] = torch.get_num_threads()
    with open(args.out, 'w') as f:
        json.dump(result, f)


def main(argv=None) -> Dict[str, dict]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    argv = list(sys.argv[1:] if argv is None else argv)
    # Large tensors always come from (and go back to) mmap, so the process RSS follows the
    # live tensors instead of glibc's free lists and peak RSS measures the working set.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in IMPLS + ('time', ):
            out = os.path.join(tmp, f'{name}.json')
            cmd = [sys.executable, os.path.abspath(__file__), *argv, '--worker', name,
                   '--out', out]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f'{name} worker failed:\n{proc.stderr[-4000:]}')
            with open(out) as f:
                results[name] = json.load(f)
    timing = results.pop('time')
    for name in IMPLS:
        for key in ('step', 'backbone'):
            vals = sorted(timing[name][key])
            results[name][f'{key}_min_s'] = vals[0]
            results[name][f'{key}_median_s'] = vals[len(vals) // 2]

    print(f'DINOv2 SSL step: {args.arch}, batch {args.batch}, 2x{args.global_size} + '
          f'{args.n_local}x{args.local_size} crops, head {args.prototypes} prototypes, '
          f'{args.device}, {timing["threads"]} threads; time: min / median of {args.iters} '
          'alternated runs')
    print('| impl | step s (min / median) | step peak MiB | backbone fwd+bwd s (min / median) '
          '| backbone peak MiB |')
    print('|---|---|---|---|---|')
    for name in IMPLS:
        r = results[name]
        print(f'| {name} | {r["step_min_s"]:.3f} / {r["step_median_s"]:.3f} | '
              f'{r["step_mb"]:.0f} | {r["backbone_min_s"]:.3f} / {r["backbone_median_s"]:.3f} '
              f'| {r["backbone_mb"]:.0f} |')
    a, b = results['dino_mm'], results['official']
    diff = max(abs(a['first_losses'][k] - b['first_losses'][k]) for k in b['first_losses'])
    ratios = {key: a[key] / b[key] for key in ('step_min_s', 'step_mb', 'backbone_min_s',
                                               'backbone_mb')}
    print(f'first-step loss terms, max |dino_mm - official| = {diff:.2e}')
    print('ratios dino_mm/official (< 1: dino_mm faster / smaller): step time '
          f'x{ratios["step_min_s"]:.2f}, step memory x{ratios["step_mb"]:.2f}; backbone time '
          f'x{ratios["backbone_min_s"]:.2f}, backbone memory x{ratios["backbone_mb"]:.2f}')
    results['max_loss_diff'] = diff
    results['ratios'] = ratios
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()
