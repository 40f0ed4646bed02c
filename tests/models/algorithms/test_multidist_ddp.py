"""MultiDistillation under DDP keeps per-module clipping and the finite-loss stop.

Before, MultiDistillation had its own ``train_step`` but no ``optimize_losses``, so the
DDP wrapper fell back to MMEngine's ``update_params``: no clipping, no stop on NaN. Here 2
gloo ranks train it through :class:`DINODistributedDataParallel`, and ``tools/train.py``
gives a launched DINO config that wrapper by default.
"""
import os.path as osp

import torch
import torch.multiprocessing as mp
from mmengine.config import Config

from tests.models.algorithms.test_distillation import HEAD, IBOT, TEACHER, real_batches, vit

WORLD = 2
CLIP = 1e-4
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def _model():
    from dino_mm.models.algorithms.distillation import MultiDistillation
    torch.manual_seed(0)
    students = {'a': dict(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT),
                'b': dict(backbone=vit(48), dino_head=HEAD, ibot_head=IBOT)}
    model = MultiDistillation(teacher=TEACHER, students=students, clip_grad=CLIP)
    model.init_weights()
    return model.train()


def _worker(rank, init_file, batch_file, out_file):
    import torch.distributed as dist
    from mmengine.optim import OptimWrapper

    from dino_mm.engine.model_wrappers import DINODistributedDataParallel
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=WORLD)
    torch.set_num_threads(1)
    batches = torch.load(batch_file, weights_only=False)
    model = _model()
    ddp = DINODistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                      find_unused_parameters=True)
    optim = OptimWrapper(torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                         lr=0.0))
    norms = {}
    orig_step = optim.step

    def step(**kwargs):  # the gradients the optimizer sees: after all-reduce and clipping
        for name, student in model.students.items():
            for sub_name, sub in student.student.items():
                grads = [p.grad.flatten() for p in sub.parameters() if p.grad is not None]
                norms[f'{name}.{sub_name}'] = float(torch.linalg.vector_norm(torch.cat(grads)))
        orig_step(**kwargs)

    optim.step = step
    log_vars = ddp.train_step(batches[rank], optim)
    logged = sorted(k for k in log_vars if 'grad_norm' in k)
    bad = dict(batches[rank])
    bad['collated_global_crops'] = bad['collated_global_crops'] * float('nan')
    try:
        ddp.train_step(bad, optim)
        stopped = ''
    except FloatingPointError as err:
        stopped = str(err)
    if rank == 0:
        torch.save(dict(norms=norms, logged=logged, stopped=stopped), out_file)
    dist.destroy_process_group()


def test_multidistillation_ddp_clips_per_module_and_stops_on_nan(tmp_path, real_images):
    batch_file, out_file = str(tmp_path / 'batches.pt'), str(tmp_path / 'out.pt')
    torch.save(real_batches(real_images, WORLD), batch_file)
    mp.spawn(_worker, args=(str(tmp_path / 'pg'), batch_file, out_file), nprocs=WORLD,
             join=True)
    out = torch.load(out_file, weights_only=False)
    assert {'a.grad_norm_backbone', 'a.grad_norm_dino_head', 'b.grad_norm_ibot_head'} <= set(
        out['logged']), out['logged']
    assert set(out['norms']) >= {'a.backbone', 'a.dino_head', 'b.backbone', 'b.ibot_head'}
    for key, norm in out['norms'].items():  # each sub-module clipped on its own
        assert norm <= CLIP * (1 + 1e-3), (key, norm)
    assert 'the total loss is not finite' in out['stopped']


def test_train_tool_wraps_launched_dino_models_in_the_dino_ddp_wrapper():
    from dino_mm.engine.model_wrappers import ensure_dino_ddp_wrapper
    leaf = osp.join(ROOT, 'configs', 'pretrain', 'dinov3_vitl16_lvd1689m_distilled_multidist.py')
    cfg = Config.fromfile(leaf)
    assert 'model_wrapper_cfg' not in cfg
    cfg.launcher = 'none'
    assert not ensure_dino_ddp_wrapper(cfg)  # one process: no wrapper
    cfg.launcher = 'pytorch'
    assert ensure_dino_ddp_wrapper(cfg)
    assert cfg.model_wrapper_cfg.type == 'dino_mm.DINODistributedDataParallel'
    # an explicit choice (the FSDP configs set None) is kept; non-DINO models are untouched
    fsdp = Config.fromfile(osp.join(ROOT, 'configs', 'pretrain',
                                    'dinov2_vitl16-short_32xb64-100e_in1k_fsdp.py'))
    fsdp.launcher = 'pytorch'
    assert not ensure_dino_ddp_wrapper(fsdp)
    cls = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'vit-tiny_cls_digits.py'))
    cls.launcher = 'pytorch'
    assert not ensure_dino_ddp_wrapper(cls)
