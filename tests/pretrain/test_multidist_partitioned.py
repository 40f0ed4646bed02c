"""Rank-partitioned multi-distillation on 4 gloo ranks (official ``ranks_range``).

Two differently sized students, ``a`` (embed 32) on ranks [0, 2) and ``b`` (embed 48) on
ranks [2, 4); one ``torchrun --nproc_per_node 4`` launch of this file runs two phases:

1. ``grads``: one DDP step of :class:`dino_mm.MultiDistillation`. The oracle is the same
   model on one process (every student, replicated layout) fed the *global* batch: each
   student must get exactly the gradients of training it alone on the whole global batch
   (its ranks split the batch and DDP averages over them only). KoLeo is off here: the
   official KoLeo is per rank, a nearest-neighbour search inside each rank's share.
2. ``runner``: MMEngine's Runner with the DINO DDP wrapper trains 2 iterations (KoLeo on),
   writes a checkpoint holding both students (gathered to rank 0), and a second Runner
   resumes it to iteration 3: each rank must get back its own student and its own optimizer
   state.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
WORLD = 4
PER_RANK = 2  # images each rank loads; the global batch is 8, each student's rank sees 4
PATCH = 8
HEAD = dict(type='dino_mm.DINOHead', out_dim=64, hidden_dim=64, bottleneck_dim=16, nlayers=3)
IBOT = dict(type='dino_mm.DINOHead', out_dim=48, hidden_dim=64, bottleneck_dim=16, nlayers=3)
# fp32; measured max |diff| of the gradients: ~1e-8 (sums over a different batch split).
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-4


def _vit(dim, depth=2, heads=4):
    return dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=PATCH,
                embed_dim=dim, depth=depth, num_heads=heads, layerscale_init=1.0,
                pos_embed_rope_rescale_coords=None, drop_path_rate=0.0)


def _model_cfg(partitioned: bool, koleo: float = 0.0) -> dict:
    def student(dim, span):
        cfg = dict(backbone=_vit(dim), dino_head=HEAD, ibot_head=IBOT,
                   koleo_loss_weight=koleo)
        if partitioned:
            cfg['ranks_range'] = span
        return cfg
    return dict(type='dino_mm.MultiDistillation',
                teacher=dict(backbone=_vit(64, depth=3), dino_head=HEAD, ibot_head=IBOT),
                students=dict(a=student(32, [0, 2]), b=student(48, [2, 4])),
                centering='sinkhorn_knopp', clip_grad=None)


def _build(cfg: dict, state: dict):
    """Build ``cfg`` and load the shared initial weights (a partitioned rank builds one
    student, so building alone would not reproduce the replicated model's RNG draws)."""
    from dino_mm.registry import MODELS
    model = MODELS.build(cfg)
    own = model.state_dict()
    missing = set(own) - set(state)
    assert not missing, sorted(missing)[:5]
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    model.init_weights = lambda: None  # the Runner must not re-initialise them
    return model.train()


def _batches(n_ranks: int) -> list:
    """Real photographs (scikit-image) in the official collate layout, one batch per rank."""
    from PIL import Image
    from skimage import data

    from dino_mm.datasets.collate import dino_collate
    from dino_mm.datasets.transforms.multi_crop import DINOMultiCrop
    torch.manual_seed(0)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
              data.immunohistochemistry(), data.cat(), data.camera(), data.moon()]
    transform = DINOMultiCrop(global_crops_size=32, local_crops_size=16, local_crops_number=2)
    out = []
    for r in range(n_ranks):
        samples = []
        for photo in photos[r * PER_RANK:(r + 1) * PER_RANK]:
            if photo.ndim == 2:
                photo = photo[..., None].repeat(3, -1)
            samples.append(transform({'img': Image.fromarray(photo)}))
        out.append(dino_collate(samples, patch_size=PATCH, mask_probability=1.0))
    return out


def _global_batch(batches: list) -> dict:
    """The ranks' batches as one crop-major batch (rank order inside each crop)."""
    from dino_mm.datasets.collate import mask_index_fields

    def cat(key, n_crops):
        parts = [b[key].reshape(n_crops, PER_RANK, *b[key].shape[1:]) for b in batches]
        return torch.cat(parts, 1).flatten(0, 1)
    masks = cat('collated_masks', 2)
    return dict(collated_global_crops=cat('collated_global_crops', 2),
                collated_local_crops=cat('collated_local_crops', 2),
                collated_masks=masks, **mask_index_fields(masks))


def _student_grads(model) -> dict:
    return {f'{name}.{k}': p.grad.detach().clone()
            for name, s in model.students.items()
            for k, p in s.student.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------- worker
def _grads_phase(out: str, rank: int) -> None:
    from mmengine.optim import OptimWrapper

    from dino_mm.engine.model_wrappers import DINODistributedDataParallel
    state = torch.load(osp.join(out, 'init.pth'), weights_only=True)
    batches = torch.load(osp.join(out, 'batches.pth'), weights_only=False)
    model = _build(_model_cfg(partitioned=True), state)
    ddp = DINODistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                      find_unused_parameters=True)
    optim = OptimWrapper(torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.0))
    grads = {}
    orig_step = optim.step

    def step(**kwargs):  # what the optimizer sees: gradients averaged over the subgroup
        grads.update(_student_grads(model))
        orig_step(**kwargs)

    optim.step = step
    log_vars = ddp.train_step(batches[rank], optim)
    if rank in (0, 2):  # the first rank of each student
        torch.save(dict(grads=grads, students=sorted(model.students),
                        ddp_group_size=torch.distributed.get_world_size(
                            model.ddp_process_group),
                        teacher_calls=model.teacher_forward_calls,
                        losses={k: float(v) for k, v in log_vars.items() if 'loss' in k}),
                   osp.join(out, f'grads_rank{rank}.pth'))


class _Dataset(torch.utils.data.Dataset):
    """The phase-1 batches, sample by sample: rank r's loader yields batch r every step."""

    def __init__(self, rank):
        from PIL import Image
        from skimage import data

        from dino_mm.datasets.transforms.multi_crop import DINOMultiCrop
        photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
                  data.immunohistochemistry(), data.coffee(), data.chelsea(),
                  data.astronaut()]
        self.photos = [Image.fromarray(p) for p in photos[rank * PER_RANK:][:PER_RANK]]
        self.transform = DINOMultiCrop(global_crops_size=32, local_crops_size=16,
                                       local_crops_number=2)
        self.metainfo = {}

    def __len__(self):
        return PER_RANK

    def __getitem__(self, idx):
        return self.transform({'img': self.photos[idx]})


def _runner(out: str, rank: int, state: dict, work_dir: str, max_iters: int,
            resume: str = None):
    from functools import partial

    from mmengine.config import Config
    from mmengine.runner import Runner

    from dino_mm.datasets.collate import dino_collate
    loader = torch.utils.data.DataLoader(
        _Dataset(rank), batch_size=PER_RANK, shuffle=False, num_workers=0,
        collate_fn=partial(dino_collate, patch_size=PATCH, mask_probability=1.0))
    wrapper = dict(type='dino_mm.DINODistributedDataParallel', device_ids=None,
                   broadcast_buffers=False, find_unused_parameters=True)
    return Runner(
        cfg=Config(dict(model_wrapper_cfg=wrapper)), launcher='pytorch',
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        model=_build(_model_cfg(partitioned=True, koleo=0.1), state), work_dir=work_dir,
        train_dataloader=loader,
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.04)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2)),
        custom_hooks=[dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.9,
                           final_momentum_teacher=1.0, total_iters=3)],
        default_scope='dino_mm', randomness=dict(seed=0), log_processor=dict(by_epoch=False),
        resume=resume is not None, load_from=resume)


def _runner_phase(out: str, rank: int) -> None:
    from mmengine.model import is_model_wrapper
    state = torch.load(osp.join(out, 'init.pth'), weights_only=True)
    runner = _runner(out, rank, state, osp.join(out, 'train'), max_iters=2)
    runner.train()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    name = next(iter(model.students))
    opt = runner.optim_wrapper.optimizer
    first_param = next(p for p in model.students[name].student.parameters())
    mine = dict(student=name,
                weights={k: v.detach().clone()
                         for k, v in model.students[name].state_dict(
                             prefix=f'students.{name}.').items()},
                exp_avg=opt.state[first_param]['exp_avg'].clone())
    resumed = _runner(out, rank, state, osp.join(out, 'resume'), max_iters=3,
                      resume=osp.join(out, 'train', 'iter_2.pth'))
    seen = {}

    from mmengine.hooks import Hook

    class Probe(Hook):  # the state right after resuming, before iteration 3 trains
        def before_train(self, runner):
            m = runner.model.module if is_model_wrapper(runner.model) else runner.model
            n = next(iter(m.students))
            p = next(iter(m.students[n].student.parameters()))
            seen.update(student=n, weights={
                k: v.detach().clone()
                for k, v in m.students[n].state_dict(prefix=f'students.{n}.').items()},
                exp_avg=runner.optim_wrapper.optimizer.state[p]['exp_avg'].clone(),
                iter=runner.iter)

    resumed.register_hook(Probe(), priority='LOWEST')
    resumed.train()
    torch.save(dict(saved=mine, resumed=seen), osp.join(out, f'runner_rank{rank}.pth'))


def _worker(out: str) -> None:
    import dino_mm  # noqa: F401
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    _grads_phase(out, rank)
    dist.barrier()
    _runner_phase(out, rank)
    dist.barrier()
    if rank == 0:
        open(osp.join(out, 'done'), 'w').close()
    dist.destroy_process_group()  # no rank exits with live gloo threads (SIGABRT)


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    import dino_mm  # noqa: F401
    from dino_mm.registry import MODELS
    out = str(tmp_path_factory.mktemp('multidist'))
    torch.manual_seed(0)
    ref = MODELS.build(_model_cfg(partitioned=False))
    ref.init_weights()
    torch.save(ref.state_dict(), osp.join(out, 'init.pth'))
    batches = _batches(WORLD)
    torch.save(batches, osp.join(out, 'batches.pth'))
    from tests.distributed import failure, torchrun
    logs = osp.join(out, 'logs')
    run = torchrun(osp.abspath(__file__), out, nproc=WORLD, log_dir=logs, timeout=500)
    log = run.stdout + run.stderr
    assert run.returncode == 0 and osp.exists(osp.join(out, 'done')), failure(run, logs)

    # the oracle: one process, every student, the global batch
    model = ref.train()
    losses = model(**_global_batch(batches), mode='loss')
    for name in model.students:
        model.zero_grad()
        sum(v for k, v in losses.items() if k.startswith(f'{name}.')).backward(
            retain_graph=True)
        torch.save(_student_grads(model), osp.join(out, f'oracle_{name}.pth'))
    return out, log


@pytest.mark.parametrize('rank,student', [(0, 'a'), (2, 'b')])
def test_each_student_gets_the_gradients_of_training_alone_on_the_global_batch(
        runs, rank, student):
    out, _ = runs
    got = torch.load(osp.join(out, f'grads_rank{rank}.pth'), weights_only=False)
    assert got['students'] == [student]  # a rank builds its own student only
    assert got['ddp_group_size'] == 2  # gradients are averaged over the student's ranks
    assert got['teacher_calls'] == 1
    assert all(k.startswith(f'{student}.') for k in got['losses'] if k != 'loss'), got['losses']
    oracle = torch.load(osp.join(out, f'oracle_{student}.pth'), weights_only=True)
    oracle = {k: v for k, v in oracle.items() if k.startswith(f'{student}.')}
    assert set(got['grads']) == set(oracle)
    assert len(oracle) > 10
    for key, grad in oracle.items():
        torch.testing.assert_close(got['grads'][key], grad, atol=GRAD_ATOL, rtol=GRAD_RTOL,
                                   msg=key)


def test_students_have_different_sizes(runs):
    out, _ = runs
    a = torch.load(osp.join(out, 'grads_rank0.pth'), weights_only=False)['grads']
    b = torch.load(osp.join(out, 'grads_rank2.pth'), weights_only=False)['grads']
    assert a['a.backbone.cls_token'].shape[-1] == 32
    assert b['b.backbone.cls_token'].shape[-1] == 48


def test_checkpoint_holds_every_student_and_resume_gives_each_rank_its_own(runs):
    out, _ = runs
    from dino_mm.engine.checkpoint import safe_torch_load
    ckpt = safe_torch_load(osp.join(out, 'train', 'iter_2.pth'))
    state = ckpt['state_dict']
    assert any(k.startswith('students.a.student.backbone.') for k in state)
    assert any(k.startswith('students.b.student.backbone.') for k in state)
    assert any(k.startswith('teacher.backbone.') for k in state)
    assert sorted(ckpt['partitioned_students']) == ['a', 'b']
    for rank in range(WORLD):
        rec = torch.load(osp.join(out, f'runner_rank{rank}.pth'), weights_only=False)
        saved, resumed = rec['saved'], rec['resumed']
        assert saved['student'] == resumed['student'] == ('a' if rank < 2 else 'b')
        assert resumed['iter'] == 2
        for key, value in saved['weights'].items():  # the checkpoint has this rank's student
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=key)
            torch.testing.assert_close(resumed['weights'][key], value, atol=0, rtol=0,
                                       msg=key)
        torch.testing.assert_close(resumed['exp_avg'], saved['exp_avg'], atol=0, rtol=0)


if __name__ == '__main__':
    _worker(sys.argv[1])
