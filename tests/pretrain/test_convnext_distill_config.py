"""The DINOv3 ConvNeXt multi-distillation leaf (configs/pretrain/
dinov3_convnext_distill-vitl16_8xb4-500e_in1k.py): official values, and one loss forward of
the shipped model (shrunk) on real photographs in the official collate layout.

Official source: dinov3/configs/train/distillation_convnext/multi_distillation_convnext_test
.yaml with convnext_{tiny,small,base,large}_p16.yaml (docs/reference.md §4.6).
"""
import copy
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LEAF = osp.join(ROOT, 'configs', 'pretrain', 'dinov3_convnext_distill-vitl16_8xb4-500e_in1k.py')

# Facts of the official recipe.
RANKS = {'convnext_tiny': [0, 2], 'convnext_small': [2, 4], 'convnext_base': [4, 6],
         'convnext_large': [6, 8]}
ARCH = {'convnext_tiny': ([3, 3, 9, 3], [96, 192, 384, 768]),
        'convnext_small': ([3, 3, 27, 3], [96, 192, 384, 768]),
        'convnext_base': ([3, 3, 27, 3], [128, 256, 512, 1024]),
        'convnext_large': ([3, 3, 27, 3], [192, 384, 768, 1536])}
LR_PEAK = {'convnext_tiny': 2e-4, 'convnext_small': 2e-4, 'convnext_base': 1e-4,
           'convnext_large': 1e-4}
WD_START = {'convnext_tiny': 0.04, 'convnext_small': 0.04, 'convnext_base': 0.02,
            'convnext_large': 0.04}
EPOCH, EPOCHS, GLOBAL_BATCH, WORLD = 1250, 500, 32, 8
HEAD = dict(out_dim=65536, hidden_dim=2048, bottleneck_dim=256, nlayers=3)


@pytest.fixture(scope='module')
def cfg():
    return Config.fromfile(LEAF)


def _hooks(cfg):
    return {h['type']: h for h in cfg.custom_hooks}


def test_official_values(cfg):
    from dino_mm.models.backbones.convnext import _resolve_arch
    model = cfg.model
    assert model.type == 'dino_mm.MultiDistillation'
    assert list(model.students) == list(RANKS)
    assert model.global_batch_size == GLOBAL_BATCH
    assert model.teacher_to_student_resolution_scale == 2.0
    assert model.centering == 'sinkhorn_knopp' and model.clip_grad == 3.0
    # ranks ranges tile the official 8 ranks; each size divides the global batch
    spans = sorted(s.ranks_range for s in model.students.values())
    assert [s for s in spans] == [[0, 2], [2, 4], [4, 6], [6, 8]]
    for name, student in model.students.items():
        assert student.ranks_range == RANKS[name]
        assert GLOBAL_BATCH % (student.ranks_range[1] - student.ranks_range[0]) == 0
        bb = student.backbone
        assert bb.type == 'dino_mm.DinoConvNeXt' and bb.patch_size == 16
        assert bb.drop_path_rate == 0.0 and bb.layer_scale_init_value == 1e-6
        res = _resolve_arch(bb.arch)
        assert (res['depths'], res['dims']) == ARCH[name]
        for key in ('dino_head', 'ibot_head'):
            assert {k: student[key][k] for k in HEAD} == HEAD
        assert student.koleo_loss_weight == 0.1 and student.global_ignore_diagonal
    # teacher: the vitl_im1k_lin834 ViT-L/16, its heads, its run's last checkpoint
    teacher = model.teacher
    assert teacher.backbone.arch == 'dinov3_vitl16'
    assert teacher.backbone.num_register_tokens == 0
    assert teacher.backbone.norm_layer == 'layernorm' and not teacher.backbone.mask_k_bias
    for key in ('dino_head', 'ibot_head'):
        assert {k: teacher[key][k] for k in HEAD} == HEAD
    stage = _hooks(cfg)['dino_mm.StageCheckpointHook']
    assert stage.previous_stage == 'dinov3_vitl16_im1k_lin834'
    assert stage.load_previous_as == 'teacher_ckpt' and model.teacher_ckpt is None
    # data: ImageNet-1k TRAIN, crops 512 / 224 x 8, masks for 32 px tokens
    loader = cfg.train_dataloader
    assert loader.batch_size * WORLD == GLOBAL_BATCH
    assert loader.dataset.type == 'dino_mm.ImageNet' and loader.dataset.split == 'TRAIN'
    crop = loader.dataset.pipeline[-1]
    assert crop.type == 'dino_mm.DINOMultiCrop'
    assert (crop.global_crops_size, crop.local_crops_size, crop.local_crops_number) == \
        (512, 224, 8)
    assert tuple(crop.global_crops_scale) == (0.32, 1.0)
    assert tuple(crop.local_crops_scale) == (0.05, 0.32) and crop.horizontal_flips
    assert loader.collate_fn.patch_size == 16 * 2
    assert tuple(loader.collate_fn.mask_ratio_min_max) == (0.1, 0.5)
    assert loader.collate_fn.mask_probability == 0.5
    # schedules: 500 epochs x 1250; lr 1e-6 -> peak -> 1e-6 (warm-up 80 ep, peak and end
    # scaled by 4 sqrt(32 / 1024)); wd linear to 0.2 over the run; temp 0.04 -> 0.07 (120
    # ep); EMA momentum 0.994 -> 1.0
    total = EPOCHS * EPOCH
    assert cfg.train_cfg.max_iters == total == 625_000
    assert dict(cfg.student_lr_peak) == LR_PEAK and dict(cfg.student_wd_start) == WD_START
    scale = 4 * math.sqrt(GLOBAL_BATCH / 1024)
    lrs = {s.param_group: s for s in cfg.param_scheduler if s.param_name == 'lr'}
    wds = {s.param_group: s for s in cfg.param_scheduler if s.param_name == 'weight_decay'}
    assert set(lrs) == set(wds) == set(LR_PEAK) and len(cfg.param_scheduler) == 8
    assert dict(cfg.optim_wrapper.paramwise_cfg.schedule_groups) == {
        name: f'students.{name}.' for name in LR_PEAK}
    for name in LR_PEAK:  # each student its own official schedules
        lr, wd = lrs[name], wds[name]
        assert (lr.param_name, lr.schedule_version, lr.total_iters) == ('lr', 'v2', total)
        assert lr.start_warmup_value == 1e-6 and lr.warmup_iters == 80 * EPOCH
        assert lr.base_value == pytest.approx(LR_PEAK[name] * scale)
        assert lr.final_value == pytest.approx(1e-6 * scale)
        assert lr.freeze_last_layer_iters == EPOCH and lr.get('scaling_rule') is None
        assert (wd.param_name, wd.schedule_version) == ('weight_decay', 'v2')
        assert (wd.start_warmup_value, wd.base_value, wd.final_value) == (
            WD_START[name], 0.2, 0.2)
        assert wd.warmup_iters == wd.total_iters == total
    optim = cfg.optim_wrapper
    assert tuple(optim.optimizer.betas) == (0.9, 0.999)
    assert optim.paramwise_cfg.layer_decay_rate == 1.0
    temp = _hooks(cfg)['dino_mm.TeacherTempHook']
    assert (temp.warmup_teacher_temp, temp.teacher_temp, temp.warmup_iters) == \
        (0.04, 0.07, 120 * EPOCH)
    momentum = _hooks(cfg)['dino_mm.TeacherMomentumHook']
    assert (momentum.momentum_teacher, momentum.final_momentum_teacher) == (0.994, 1.0)
    # a linear ramp over the whole run (v2 warm-up = every iteration), not the v1 cosine
    import types

    from dino_mm.registry import HOOKS
    with DefaultScope.overwrite_default_scope('dino_mm'):
        hook = HOOKS.build(dict(momentum))
    runner = types.SimpleNamespace(  # what before_train reads
        model=types.SimpleNamespace(update_teacher=lambda m: None), max_iters=total)
    hook.before_train(runner)
    for frac in (0.25, 0.5, 0.75):
        assert hook.schedule(int(frac * total)) == pytest.approx(0.994 + 0.006 * frac)


def _tiny(cfg) -> dict:
    """The shipped model config with every backbone and head shrunk (nothing else)."""
    model = copy.deepcopy(cfg.model.to_dict())
    model['teacher']['backbone'].update(depth=2, embed_dim=32, num_heads=2)
    small = dict(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    for part in [model['teacher'], *model['students'].values()]:
        for key in ('dino_head', 'ibot_head'):
            part[key].update(small)
    for i, student in enumerate(model['students'].values()):
        width = 8 * (i + 1)  # a different size per student
        student['backbone'].update(depths=[1, 1, 1, 1],
                                   dims=[width, 2 * width, 3 * width, 4 * width])
    return model


def test_tiny_model_loss_forward_in_the_official_layout(cfg, real_images):
    from PIL import Image

    from dino_mm.datasets.collate import dino_collate
    from dino_mm.datasets.transforms.multi_crop import DINOMultiCrop
    from dino_mm.registry import MODELS

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('dino_mm'):
        model = MODELS.build(_tiny(cfg))
    model.init_weights()
    model.train()
    assert not model.partitioned  # world size 1: every student, replicated
    assert list(model.students) == list(RANKS)

    # The leaf's own pipeline and collate at half the crop sizes, 2 local crops.
    crop = dict(cfg.train_dataloader.dataset.pipeline[-1])
    crop.pop('type')
    crop.update(global_crops_size=crop['global_crops_size'] // 2,
                local_crops_size=crop['local_crops_size'] // 2, local_crops_number=2)
    transform = DINOMultiCrop(**crop)
    collate = dict(cfg.train_dataloader.collate_fn)
    collate.pop('type')
    images = [real_images[k] for k in ('astronaut', 'chelsea', 'coffee')]
    batch = dino_collate([transform({'img': Image.fromarray(im)}) for im in images],
                         **collate)
    size = crop['global_crops_size']
    assert batch['collated_global_crops'].shape == (2 * len(images), 3, size, size)
    assert batch['collated_local_crops'].shape[-1] == crop['local_crops_size']
    assert batch['collated_masks'].shape[1] == (size // 32)**2  # the ConvNeXt grid
    assert int(batch['n_masked_patches']) > 0

    seen = []
    original = model.teacher.backbone.forward_features
    model.teacher.backbone.forward_features = lambda x: seen.append(x.shape) or original(x)
    losses = model(**model.data_preprocessor(batch, True), mode='loss')
    # one teacher pass, on the global crops downsampled by the resolution scale
    assert seen == [(2 * len(images), 3, size // 2, size // 2)]
    assert model.teacher_forward_calls == 1
    terms = ('dino_local_crops_loss', 'dino_global_crops_loss', 'koleo_loss', 'ibot_loss')
    for name in RANKS:
        for term in terms:
            assert f'{name}.{term}' in losses, sorted(losses)
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
    assert not bad, bad
    total = sum(v for k, v in losses.items() if k.endswith('_loss'))
    assert torch.isfinite(total) and total.requires_grad


def test_each_student_follows_its_own_official_schedules(cfg):
    """The config's optimizer and schedulers, built by MMEngine on the tiny model: every
    student's parameter groups get that student's lr and weight decay, and one student's
    scheduler leaves the other students' groups alone."""
    from mmengine.optim import build_optim_wrapper

    from dino_mm.registry import MODELS, PARAM_SCHEDULERS
    with DefaultScope.overwrite_default_scope('dino_mm'):
        model = MODELS.build(_tiny(cfg))
        optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper.to_dict()))
        schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optim))
                      for s in copy.deepcopy(cfg.param_scheduler)]
    groups = optim.optimizer.param_groups
    owner = {id(p): n.split('.')[1] for n, p in model.named_parameters()
             if n.startswith('students.')}
    for group in groups:  # never fused across students
        assert {owner[id(p)] for p in group['params']} == {group['schedule_group']}
    assert {g['schedule_group'] for g in groups} == set(LR_PEAK)
    scale = 4 * math.sqrt(GLOBAL_BATCH / 1024)
    peak = 80 * EPOCH  # the end of the warm-up: lr at its peak
    for it, want_lr, want_wd in ((0, lambda n: 1e-6, lambda n: WD_START[n]),
                                 (peak, lambda n: LR_PEAK[n] * scale, None)):
        for s in schedulers:
            s.last_step = it
            for group, value in zip(groups, s._get_value()):
                group[s.param_name] = value
        for group in groups:
            name = group['schedule_group']
            if not group['is_last_layer'] or it >= EPOCH:
                assert group['lr'] == pytest.approx(want_lr(name) * group['lr_mult'])
            if want_wd is not None:
                assert group['weight_decay'] == pytest.approx(want_wd(name) *
                                                              group['wd_mult'])
    with pytest.raises(ValueError, match='schedule_groups'):
        plain = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-4)))
        PARAM_SCHEDULERS.build(dict(cfg.param_scheduler[0], optimizer=plain))
