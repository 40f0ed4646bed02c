"""Multi-process pretraining: FSDP2 (gloo, CPU) and the DINO DDP wrapper vs one process.

One ``torchrun --nproc_per_node 2`` launch of this file runs four phases (process starts
dominate the cost on 2 cores):

1. ``fsdp``: tiny DINOv2 under :class:`dino_mm.DINOFSDPStrategy` (FlexibleRunner), 4 iters,
   sharded checkpoints at iters 2 and 4;
2. ``resume``: a new FlexibleRunner resumes ``iter_2.pth`` and trains iters 3-4;
3. ``ddp``: the same config under the standard Runner with
   :class:`dino_mm.DINODistributedDataParallel`;
4. ``kill``: FSDP again, rank 1 SIGKILLs itself at iter 3 (after the iter-2 checkpoint).

A second, single-process launch trains the same config unsharded with the same *global*
batch. Both sides see exactly the same images per step: a deterministic dataset (each
sample's crops and masks depend only on its index) and a sampler that gives rank r the r-th
slice of global batch t. Sinkhorn-Knopp centering and all DINO / iBOT normalisations are
global; KoLeo is switched off because the official KoLeo is computed on each rank's local
batch (a per-rank nearest-neighbour search), so it legitimately differs with world size.
"""
import json
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest
import torch

from tests.distributed import failure, torchrun, worker_env

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
N_IMAGES = 24
GLOBAL_BATCH = 4
MAX_ITERS = 4
# fp32 on both sides; measured max |diff|: losses 4.8e-7 (FSDP and DDP), teacher 1.5e-8.
LOSS_ATOL = 1e-5
PARAM_ATOL = 1e-6


# ----------------------------------------------------------------------------- worker
def _digits():
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    imgs = torch.from_numpy(load_digits().images[:N_IMAGES]).float() / 16.0
    imgs = F.interpolate(imgs[:, None], size=(40, 40), mode='bilinear', align_corners=False)
    return (imgs.repeat(1, 3, 1, 1) - 0.5) / 0.25


class _CropsDataset(torch.utils.data.Dataset):
    """Deterministic multi-crop sample per index (real digits images)."""

    def __init__(self):
        self.images = _digits()
        self.metainfo = {}

    def __len__(self):
        return N_IMAGES

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(idx)
        img = self.images[idx]

        def crop(size):
            y, x = torch.randint(0, 40 - size + 1, (2,), generator=g).tolist()
            return img[:, y:y + size, x:x + size].clone()

        globals_ = [crop(32), crop(32).flip(-1)]
        locals_ = [crop(16) for _ in range(2)]
        mask = torch.zeros(16, dtype=torch.bool)
        mask[torch.randperm(16, generator=g)[:1 + idx % 5]] = True
        return dict(global_crops=globals_, local_crops=locals_,
                    masks=[mask, torch.zeros(16, dtype=torch.bool)])


def _collate(samples):
    """Official collate layout (crop-major), with the masks fixed per sample."""
    n_g, n_l = len(samples[0]['global_crops']), len(samples[0]['local_crops'])
    gl = torch.stack([s['global_crops'][c] for c in range(n_g) for s in samples])
    lo = torch.stack([s['local_crops'][c] for c in range(n_l) for s in samples])
    masks = torch.stack([s['masks'][c] for c in range(n_g) for s in samples])
    counts = masks.sum(-1, keepdim=True).clamp(min=1)
    weights = (1.0 / counts).expand_as(masks)[masks]
    idx = masks.flatten().nonzero().flatten()
    return dict(collated_global_crops=gl, collated_local_crops=lo, collated_masks=masks,
                mask_indices_list=idx, masks_weight=weights, upperbound=int(idx.numel()),
                n_masked_patches=torch.tensor([idx.numel()]))


class _GlobalBatchSampler(torch.utils.data.Sampler):
    """Global batch t = images [t*G, (t+1)*G) mod N; rank r reads the r-th slice."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def __len__(self):  # one "epoch" = one pass over the images
        return N_IMAGES // self.world

    def __iter__(self):
        per_rank = GLOBAL_BATCH // self.world
        t = 0
        while True:
            start = t * GLOBAL_BATCH + self.rank * per_rank
            yield from ((start + i) % N_IMAGES for i in range(per_rank))
            t += 1


def _model_cfg():
    head = dict(type='dino_mm.DINOHead', out_dim=64, hidden_dim=64, bottleneck_dim=32,
                nlayers=3)
    return dict(
        type='dino_mm.DINOv2',
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', patch_size=8,
                      img_size=32, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0,
                      layerscale_init=1e-5, block_chunks=2),
        dino_head=head, ibot_head=dict(head), centering='sinkhorn_knopp',
        koleo_loss_weight=0.0, clip_grad=3.0)


class _Recorder:
    """Hook: mean of every logged loss over ranks, per iteration."""

    def __new__(cls, path):
        from mmengine.hooks import Hook

        class Recorder(Hook):
            priority = 'LOWEST'

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                import torch.distributed as dist
                keys = sorted(k for k in outputs if k.endswith('loss'))
                vals = torch.stack([outputs[k].detach().float() for k in keys])
                if dist.is_initialized():
                    dist.all_reduce(vals)
                    vals /= dist.get_world_size()
                rec = dict(zip(keys, vals.tolist()))
                if not dist.is_initialized() or dist.get_rank() == 0:
                    with open(path, 'a') as f:
                        f.write(json.dumps(dict(iter=runner.iter + 1, **rec)) + '\n')
        return Recorder()


class _Killer:

    def __new__(cls, at_iter, rank_to_kill):
        from mmengine.hooks import Hook

        class Killer(Hook):

            def before_train_iter(self, runner, batch_idx, data_batch=None):
                if runner.iter + 1 == at_iter and runner.rank == rank_to_kill:
                    os.kill(os.getpid(), signal.SIGKILL)
        return Killer()


def _build_model():
    """Same initial weights in every run: Runner and FlexibleRunner call init_weights at
    different RNG states, so initialise here and make their call a no-op."""
    from dino_mm.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(_model_cfg())
    model.init_weights()
    model.init_weights = lambda: None
    return model


def _runner(kind, work_dir, rank, world, hooks, resume=None, ckpt_interval=2, max_iters=None):
    from mmengine.runner import FlexibleRunner, Runner
    loader = torch.utils.data.DataLoader(
        _CropsDataset(), batch_size=GLOBAL_BATCH // world,
        sampler=_GlobalBatchSampler(rank, world), collate_fn=_collate, num_workers=0)
    kwargs = dict(
        model=_build_model(), work_dir=work_dir, experiment_name=f'{kind}_{osp.basename(work_dir)}',
        train_dataloader=loader,
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters or MAX_ITERS),
        optim_wrapper=dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.04),
            constructor='dino_mm.LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.9, patch_embed_lr_mult=0.2,
                               variant='dinov2')),
        param_scheduler=[dict(type='dino_mm.DINOCosineParamScheduler', param_name='lr',
                              base_value=2e-3, final_value=1e-4, total_iters=MAX_ITERS,
                              warmup_iters=1, by_epoch=False)],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=ckpt_interval,
                            max_keep_ckpts=3)),
        custom_hooks=[dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04,
                           teacher_temp=0.07, warmup_iters=2),
                      dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.9,
                           final_momentum_teacher=1.0, total_iters=MAX_ITERS)] + hooks,
        default_scope='dino_mm', randomness=dict(seed=0),
        log_processor=dict(by_epoch=False), resume=resume is not None, load_from=resume)
    if kind == 'fsdp':
        return FlexibleRunner(
            strategy=dict(type='dino_mm.DINOFSDPStrategy', mixed_precision=None), **kwargs,
            launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo')))
    if kind == 'ddp':
        from mmengine.config import Config
        wrapper = dict(type='dino_mm.DINODistributedDataParallel', device_ids=None,
                       broadcast_buffers=False)
        return Runner(cfg=Config(dict(model_wrapper_cfg=wrapper)), launcher='pytorch',
                      env_cfg=dict(dist_cfg=dict(backend='gloo')), **kwargs)
    return Runner(**kwargs)


def _save_teacher(runner, path):
    from mmengine.model import is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    torch.save({k: v.detach().clone() for k, v in model.teacher.state_dict().items()}, path)


def _worker(out: str, mode: str) -> None:
    import dino_mm  # noqa: F401  (registers the modules; mm* task packages not needed)
    try:
        import mmcv  # noqa: F401
    except ImportError:
        # MODELS' `locations` include the mmseg/mmdet glue; the pretraining modules are
        # already registered by `import dino_mm`, so skip importing the rest.
        from dino_mm.registry import MODELS
        MODELS._imported = True
    if mode == 'ref':
        runner = _runner('ref', osp.join(out, 'ref'), 0, 1,
                         [_Recorder(osp.join(out, 'ref_losses.jsonl'))])
        runner.train()
        _save_teacher(runner, osp.join(out, 'ref_teacher.pth'))
        return
    import torch.distributed as dist
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    runner = _runner('fsdp', osp.join(out, 'fsdp'), rank, world,
                     [_Recorder(osp.join(out, 'fsdp_losses.jsonl'))])
    runner.train()
    runner = _runner('fsdp', osp.join(out, 'resume'), rank, world,
                     [_Recorder(osp.join(out, 'resume_losses.jsonl'))],
                     resume=osp.join(out, 'fsdp', 'iter_2.pth'))
    runner.train()
    runner = _runner('ddp', osp.join(out, 'ddp'), rank, world,
                     [_Recorder(osp.join(out, 'ddp_losses.jsonl'))])
    runner.train()
    if rank == 0:
        _save_teacher(runner, osp.join(out, 'ddp_teacher.pth'))
        open(osp.join(out, 'phases_done'), 'w').close()
    dist.barrier()
    runner = _runner('fsdp', osp.join(out, 'kill'), rank, world, [_Killer(3, 1)],
                     max_iters=6)
    runner.train()


# ------------------------------------------------------------------------------ tests
def _env():
    return worker_env()


def _losses(path):
    with open(path) as f:
        return {r['iter']: r for r in map(json.loads, f)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('dist'))
    me = osp.abspath(__file__)
    ref = subprocess.Popen([sys.executable, me, out, 'ref'], env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = osp.join(out, 'logs')
    dist_run = torchrun(me, out, 'dist', nproc=2, log_dir=logs, timeout=400)
    ref_log = ref.communicate(timeout=300)[0]
    assert ref.returncode == 0, ref_log[-3000:]
    log = dist_run.stdout + dist_run.stderr
    assert osp.exists(osp.join(out, 'phases_done')), failure(dist_run, logs)
    return out, dist_run.returncode, log


def test_fsdp_losses_and_resume_match_single_process(runs):
    """FSDP2 on 2 ranks (gloo) = 1 process with the same global batch; resume continues."""
    out = runs[0]
    ref = _losses(osp.join(out, 'ref_losses.jsonl'))
    fsdp = _losses(osp.join(out, 'fsdp_losses.jsonl'))
    resume = _losses(osp.join(out, 'resume_losses.jsonl'))
    assert sorted(fsdp) == sorted(ref) == list(range(1, MAX_ITERS + 1))
    assert sorted(resume) == [3, 4]
    keys = [k for k in ref[1] if k != 'iter']
    assert {'dino_local_crops_loss', 'dino_global_crops_loss', 'ibot_loss'} <= set(keys)
    # the teacher moves, so later iterations would differ if anything was off
    assert abs(ref[4]['loss'] - ref[1]['loss']) > 1e-3
    for it in ref:
        for k in keys:
            assert fsdp[it][k] == pytest.approx(ref[it][k], abs=LOSS_ATOL), (it, k)
    for it in (3, 4):
        for k in keys:
            assert resume[it][k] == pytest.approx(fsdp[it][k], abs=LOSS_ATOL), (it, k)


def test_fsdp_teacher_equals_unsharded_teacher(runs):
    """The sharded checkpoint, consolidated, holds the teacher of the unsharded run."""
    out = runs[0]
    sys.path.insert(0, osp.join(ROOT, 'tools', 'convert'))
    from consolidate_sharded import main as consolidate
    dst = osp.join(out, 'fsdp_teacher_backbone.pth')
    assert consolidate([osp.join(out, 'fsdp', 'iter_4.pth'), dst]) == 0
    got = torch.load(dst, weights_only=True)
    ref = torch.load(osp.join(out, 'ref_teacher.pth'), weights_only=True)
    ref_bb = {k[len('backbone.'):]: v for k, v in ref.items() if k.startswith('backbone.')}
    # official layout: chunked blocks.{c}.{i} flattened to blocks.{i}
    assert 'blocks.1.norm1.weight' in got and not any(k.startswith('blocks.1.1.') for k in got)
    ref_flat = {k.replace('blocks.0.0.', 'blocks.0.').replace('blocks.1.1.', 'blocks.1.'): v
                for k, v in ref_bb.items()}
    assert set(got) == set(ref_flat)
    for k in got:
        torch.testing.assert_close(got[k], ref_flat[k], atol=PARAM_ATOL, rtol=0, msg=k)


def test_ddp_wrapper_matches_single_process(runs):
    """DINODistributedDataParallel: same losses and teacher as 1 process (global batch)."""
    out = runs[0]
    ref = _losses(osp.join(out, 'ref_losses.jsonl'))
    ddp = _losses(osp.join(out, 'ddp_losses.jsonl'))
    for it in ref:
        for k in ref[it]:
            assert ddp[it][k] == pytest.approx(ref[it][k], abs=LOSS_ATOL), (it, k)
    got = torch.load(osp.join(out, 'ddp_teacher.pth'), weights_only=True)
    ref_t = torch.load(osp.join(out, 'ref_teacher.pth'), weights_only=True)
    for k in ref_t:
        torch.testing.assert_close(got[k], ref_t[k], atol=PARAM_ATOL, rtol=0, msg=k)


def test_killed_rank_ends_job_and_keeps_last_checkpoint(runs):
    """SIGKILL of rank 1 at iter 3: the job fails naming the rank; iter_2 stays usable."""
    out, rc, log = runs
    assert rc != 0
    assert 'exitcode  : -9' in log or 'Signal 9' in log, log[-4000:]
    work = osp.join(out, 'kill')
    with open(osp.join(work, 'last_checkpoint')) as f:
        last = f.read().strip()
    assert osp.basename(last) == 'iter_2.pth'
    assert not osp.exists(osp.join(work, 'iter_4.pth'))
    from dino_mm.engine.fsdp import read_sharded_state_dict
    sd = read_sharded_state_dict(last)
    assert any(k.startswith('teacher.backbone.') for k in sd)
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


if __name__ == '__main__':
    _worker(sys.argv[1], sys.argv[2])
