"""Distillation (frozen teacher -> one student) and DINOv3 multi-distillation."""
import pytest
import torch
from mmengine.optim import OptimWrapper
from PIL import Image

from dino_mm.datasets.collate import dino_collate
from dino_mm.datasets.transforms.multi_crop import DINOMultiCrop
from dino_mm.models.algorithms.dinov3 import DINOv3
from dino_mm.models.algorithms.distillation import DINOv3Distillation, MultiDistillation

PATCH, GLOBAL, LOCAL = 8, 32, 16
HEAD = dict(out_dim=64, hidden_dim=64, bottleneck_dim=16, nlayers=3)
IBOT = dict(out_dim=48, hidden_dim=64, bottleneck_dim=16, nlayers=3)


def vit(dim, depth=2, heads=4, **kw):
    return dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=PATCH,
                embed_dim=dim, depth=depth, num_heads=heads, layerscale_init=1.0,
                pos_embed_rope_rescale_coords=None, **kw)


TEACHER = dict(backbone=vit(64, depth=3), dino_head=HEAD, ibot_head=IBOT)


def real_batches(real_images, n=2):
    transform = DINOMultiCrop(global_crops_size=GLOBAL, local_crops_size=LOCAL,
                              local_crops_number=2)
    keys = sorted(real_images)
    out = []
    for i in range(n):
        samples = [transform({'img': Image.fromarray(real_images[k])}) for k in keys]
        out.append(dino_collate(samples, patch_size=PATCH))
    return out


@pytest.fixture
def teacher_ckpt(tmp_path):
    """A 'pretrained' teacher: the EMA teacher of a DINOv3 pretraining model."""
    model = DINOv3(backbone=TEACHER['backbone'], dino_head=HEAD, ibot_head=IBOT)
    model.init_weights()
    path = tmp_path / 'teacher_pretrain.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path), model


def test_distillation_uses_frozen_teacher_targets(real_images, teacher_ckpt):
    path, pretrained = teacher_ckpt
    model = DINOv3Distillation(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT,
                               teacher=TEACHER, teacher_ckpt=path)
    model.init_weights()
    torch.testing.assert_close(model.teacher.state_dict(), pretrained.teacher.state_dict())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert not model.teacher.training and not model.student_ema.training
    batch = real_batches(real_images, 1)[0]
    losses = model(**batch, mode='loss')
    # Reference: same student, targets from the pretrained teacher, unmasked student crops.
    inputs = model.prepare_inputs(**batch)
    targets = model.teacher_output(inputs)
    ref = model.compute_losses(inputs, targets)
    for key in ref:
        torch.testing.assert_close(losses[key], ref[key], msg=key)
    model.mask_student_globals = True  # what SSL does: masked student global crops
    masked = model.compute_losses(inputs, targets)
    del model.mask_student_globals
    assert abs(masked['ibot_loss'] - losses['ibot_loss']) > 1e-6  # masks really not applied
    # One step: teacher untouched, EMA follows the student.
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    optim = OptimWrapper(torch.optim.AdamW(model.student.parameters(), lr=1e-3))
    model.train_step(batch, optim)
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    ema_before = model.student_ema.backbone.cls_token.clone()
    model.update_teacher(0.5)
    torch.testing.assert_close(model.student_ema.backbone.cls_token,
                               0.5 * ema_before + 0.5 * model.student.backbone.cls_token)


def test_distillation_bad_teacher(tmp_path, teacher_ckpt):
    with pytest.raises(ValueError, match='out_dim'):
        DINOv3Distillation(backbone=vit(32), dino_head=dict(HEAD, out_dim=10), ibot_head=IBOT,
                           teacher=TEACHER)
    model = DINOv3Distillation(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT,
                               teacher=dict(TEACHER, backbone=vit(48, depth=3)),
                               teacher_ckpt=teacher_ckpt[0])
    with pytest.raises(ValueError, match=r'teacher_pretrain\.pth(.|\n)*\(1, 1, 64\) vs model '
                       r'\(1, 1, 48\)'):
        model.init_weights()


def test_multi_distillation_one_teacher_pass_and_students_learn(real_images, teacher_ckpt):
    students = {
        'vit_small': dict(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT),
        'vit_base': dict(backbone=vit(48, heads=4), dino_head=HEAD, ibot_head=IBOT),
    }
    model = MultiDistillation(teacher=TEACHER, students=students, teacher_ckpt=teacher_ckpt[0],
                              teacher_temp=0.05)
    model.init_weights()
    model.train()
    n_calls = {'teacher': 0}
    original = model.teacher.backbone.forward_features

    def counting(*args, **kwargs):
        n_calls['teacher'] += 1
        return original(*args, **kwargs)

    model.teacher.backbone.forward_features = counting
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p is q for p in params for q in model.teacher.parameters())
    optim = OptimWrapper(torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0))
    batches = real_batches(real_images, 2)
    history = {name: [] for name in students}
    n_steps = 16
    for step in range(n_steps):
        log_vars = model.train_step(batches[step % 2], optim)
        model.update_teacher(0.99)
        for name in students:
            history[name].append(sum(v.item() for k, v in log_vars.items()
                                     if k.startswith(name + '.') and k.endswith('_loss')))
    assert n_calls['teacher'] == n_steps  # one teacher forward per batch for all students
    assert model.teacher_forward_calls == n_steps
    assert {'vit_small.grad_norm_backbone', 'vit_base.grad_norm_ibot_head'} <= set(log_vars)
    for name, values in history.items():
        first, last = sum(values[:2]) / 2, sum(values[-2:]) / 2
        print(f'{name}: loss {first:.4f} -> {last:.4f}')
        assert last < first - 0.05, (name, values)
    feats = model(batches[0]['collated_global_crops'][:2], mode='tensor')
    assert feats['vit_small'].shape == (2, 32) and feats['vit_base'].shape == (2, 48)


def test_multi_distillation_each_student_only_gets_its_own_gradient(real_images):
    students = {'a': dict(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT),
                'b': dict(backbone=vit(48), dino_head=HEAD, ibot_head=IBOT)}
    model = MultiDistillation(teacher=TEACHER, students=students)
    model.init_weights()
    model.train()
    batch = real_batches(real_images, 1)[0]
    losses = model(**batch, mode='loss')
    sum(v for k, v in losses.items() if k.startswith('a.')).backward()
    assert all(p.grad is None for p in model.students['b'].parameters())
    assert model.students['a'].student.backbone.cls_token.grad is not None
    with pytest.raises(ValueError, match='patch size'):
        MultiDistillation(teacher=TEACHER, students={'c': dict(
            backbone=dict(vit(32), patch_size=4), dino_head=HEAD, ibot_head=IBOT)})


def test_rank_ranges_must_tile_the_ranks():
    from dino_mm.models.algorithms.distillation import check_rank_ranges
    assert check_rank_ranges({'s': [0, 48], 'b': (48, 96)}, 96) == [('s', 0, 48),
                                                                   ('b', 48, 96)]
    with pytest.raises(ValueError, match="student 'b' has ranks_range=None"):
        check_rank_ranges({'s': [0, 2], 'b': None}, 4)
    with pytest.raises(ValueError, match="student 'b' starts at rank 1, expected 2"):
        check_rank_ranges({'s': [0, 2], 'b': [1, 4]}, 4)  # overlap
    with pytest.raises(ValueError, match="student 'b' starts at rank 3, expected 2"):
        check_rank_ranges({'s': [0, 2], 'b': [3, 4]}, 4)  # gap
    with pytest.raises(ValueError, match=r'cover ranks \[0, 4\), but the job has 8 ranks'):
        check_rank_ranges({'s': [0, 2], 'b': [2, 4]}, 8)
    with pytest.raises(ValueError, match='ranks_range=\\[3, 1\\]'):
        check_rank_ranges({'s': [3, 1]}, 4)


def test_single_process_ignores_rank_ranges_and_builds_every_student():
    students = {'a': dict(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT, ranks_range=[0, 2]),
                'b': dict(backbone=vit(48), dino_head=HEAD, ibot_head=IBOT, ranks_range=[2, 4])}
    model = MultiDistillation(teacher=TEACHER, students=students)
    assert sorted(model.students) == ['a', 'b'] and not model.partitioned


def test_resolution_scale_downsamples_the_teacher_crops_to_the_student_grid(real_images):
    """A ViT/8 teacher at half resolution has the token grid of a ViT/16 student."""
    import torch.nn.functional as F
    with pytest.raises(ValueError, match='set teacher_to_student_resolution_scale=2'):
        MultiDistillation(teacher=TEACHER, students={'a': dict(
            backbone=dict(vit(32), patch_size=16), dino_head=HEAD, ibot_head=IBOT)})
    students = {'a': dict(backbone=dict(vit(32), patch_size=16), dino_head=HEAD,
                          ibot_head=IBOT)}
    model = MultiDistillation(teacher=TEACHER, students=students,
                              teacher_to_student_resolution_scale=2.0)
    model.init_weights()
    batch = real_batches(real_images, 1)[0]  # masks for patches of 8: the wrong grid
    with pytest.raises(ValueError, match=r'give the students 4 patch tokens \(token stride '
                       r'16\), but the iBOT masks have 16; set the collate patch_size to 16'):
        model(**batch, mode='loss')
    transform = DINOMultiCrop(global_crops_size=GLOBAL, local_crops_size=LOCAL,
                              local_crops_number=2)
    samples = [transform({'img': Image.fromarray(real_images[k])}) for k in sorted(real_images)]
    batch = dino_collate(samples, patch_size=16)  # official: student patch x scale
    inputs = model.prepare_inputs(**batch)
    model.teacher_output(inputs)
    expected = F.interpolate(batch['collated_global_crops'], scale_factor=0.5, mode='bilinear',
                             antialias=True)
    torch.testing.assert_close(inputs['teacher_crops'], expected, atol=0, rtol=0)
    assert inputs['global_crops'].shape[-1] == GLOBAL  # the student sees the full crops
    seen = []
    original = model.teacher.backbone.forward_features
    model.teacher.backbone.forward_features = lambda x: seen.append(x.shape) or original(x)
    losses = model(**batch, mode='loss')
    assert seen == [(2 * len(samples), 3, 16, 16)]
    assert all(torch.isfinite(v) for v in losses.values())


def test_convnext_students_learn_from_a_vit_teacher(real_images):
    """Official ConvNeXt distillation: ConvNeXt tokens are 32 px apart, a ViT/16 teacher at
    half resolution gives the same grid (here: a ViT/8 teacher at 1/4)."""
    tiny = dict(type='dino_mm.DinoConvNeXt', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
    students = {'convnext': dict(backbone=tiny, dino_head=HEAD, ibot_head=IBOT),
                'vit': dict(backbone=dict(vit(32, heads=2), patch_size=32), dino_head=HEAD,
                            ibot_head=IBOT)}
    model = MultiDistillation(teacher=TEACHER, students=students,
                              teacher_to_student_resolution_scale=4.0)
    model.init_weights()
    model.train()
    transform = DINOMultiCrop(global_crops_size=64, local_crops_size=32, local_crops_number=2)
    samples = [transform({'img': Image.fromarray(real_images[k])}) for k in sorted(real_images)]
    batch = dino_collate(samples, patch_size=32, mask_probability=1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = OptimWrapper(torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0))
    first = model.train_step(batch, optim)
    for _ in range(6):
        last = model.train_step(batch, optim)
    assert 'convnext.ibot_loss' in last and 'convnext.grad_norm_backbone' in last
    total = {k: sum(v.item() for n, v in d.items() if n.startswith('convnext.') and
                    n.endswith('_loss')) for k, d in (('first', first), ('last', last))}
    assert total['last'] < total['first'], total


def test_replicated_run_takes_weights_but_refuses_to_resume_a_partitioned_checkpoint():
    students = {'a': dict(backbone=vit(32), dino_head=HEAD, ibot_head=IBOT)}
    model = MultiDistillation(teacher=TEACHER, students=students)
    ckpt = dict(state_dict=model.state_dict(), optimizer={'state': {}},
                partitioned_students={'a': dict(optimizer={'state': {}})})
    model.select_partitioned_state(ckpt, resuming=False)  # load_from: the weights fit
    assert set(ckpt['state_dict']) == set(model.state_dict())
    with pytest.raises(ValueError, match='resume it with the same ranks_range layout'):
        model.select_partitioned_state(ckpt, resuming=True)
