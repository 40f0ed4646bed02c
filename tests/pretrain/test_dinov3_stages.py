"""DINOv3 stage chain on the tiny demo configs with the real MMEngine Runner.

Stage 1 (pretrain) -> stage 2 (Gram anchoring, Gram teacher from the stage-1 teacher,
refreshed on schedule) -> stage 3 (high-resolution adaptation, multi-resolution batches,
student started from the stage-2 teacher) -> stage 4 (distillation: the stage-3 teacher,
frozen, into a narrower student). Each stage config inherits the previous one and
names it (``StageCheckpointHook(previous_stage=...)``): its checkpoint is found in the
sibling work dir, with no path typed by hand; an explicit ``load_from`` still wins. Wrong or
missing checkpoints fail before the first iteration.
"""
import copy
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from dino_mm.datasets.imagenet import dump_imagenet_extra

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs', 'demo')


@pytest.fixture(scope='module')
def digits_root(tmp_path_factory):
    spec = importlib.util.spec_from_file_location(
        'make_digits_dataset',
        osp.join(REPO, 'tools', 'dataset_converters', 'make_digits_dataset.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = str(tmp_path_factory.mktemp('digits'))
    module.make_digits_dataset(root, size=32)
    dump_imagenet_extra(root, osp.join(root, 'extra'), ['TRAIN'])
    return root


def _cfg(name, digits_root, work_dir, max_iters, **overrides):
    cfg = Config.fromfile(osp.join(DEMO, name))
    cfg.work_dir = str(work_dir)
    cfg.train_cfg.max_iters = max_iters
    cfg.train_dataloader.batch_size = 4
    dataset = cfg.train_dataloader.dataset
    (dataset.dataset if 'dataset' in dataset else dataset).data_root = digits_root
    cfg.default_hooks.checkpoint.interval = max_iters
    cfg.default_hooks.logger.interval = 1
    cfg.log_level = 'INFO'
    cfg.merge_from_dict(overrides)
    return cfg


class Snapshot(Hook):
    """Record the model state right before the first training iteration."""

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == 0 and not hasattr(self, 'state'):
            self.state = copy.deepcopy(runner.model.state_dict())
            self.batch_sizes = []
        self.batch_sizes.append(tuple(data_batch['collated_global_crops'].shape[-2:]))


def _hook(cfg, hook_type):
    return next(h for h in cfg.custom_hooks if h['type'] == hook_type)


def _run(cfg, *extra_hooks):
    runner = Runner.from_cfg(cfg)
    for hook in extra_hooks:
        runner.register_hook(hook)
    runner.train()
    return runner


@pytest.fixture(scope='module')
def stage1(digits_root, tmp_path_factory):
    # tools/train.py's layout: work_dirs/<config name>
    work = tmp_path_factory.mktemp('work_dirs') / 'dinov3_vit-tiny_digits'
    runner = _run(_cfg('dinov3_vit-tiny_digits.py', digits_root, work, 3))
    ckpt = osp.join(str(work), 'iter_3.pth')
    assert osp.isfile(ckpt)
    return ckpt, runner


def test_stage_chain(digits_root, stage1):
    ckpt1, _ = stage1
    work_dirs = osp.dirname(osp.dirname(ckpt1))
    state1 = torch.load(ckpt1, map_location='cpu', weights_only=True)['state_dict']
    assert not any(k.startswith('gram_teacher.') for k in state1)

    # ---- stage 2: Gram anchoring from the stage-1 checkpoint, found by convention
    cfg2 = _cfg('dinov3_vit-tiny_digits_gram.py', digits_root,
                osp.join(work_dirs, 'dinov3_vit-tiny_digits_gram'), 6)
    assert cfg2.load_from is None and cfg2.model.gram_ckpt is None
    _hook(cfg2, 'dino_mm.GramTeacherRefreshHook').update(it_first_update=2, update_frequency=2,
                                                         max_updates=2)
    for hook in cfg2.custom_hooks:
        if hook['type'] == 'dino_mm.LossWeightScheduleHook':
            hook.update(warmup_iters=2, cosine_iters=2)
    snap2 = Snapshot()
    runner2 = _run(cfg2, snap2)
    # Loaded: student, teacher and Gram teacher start from stage 1 (Gram = stage-1 teacher).
    for key, value in state1.items():
        torch.testing.assert_close(snap2.state[key], value, msg=key)
        if key.startswith('teacher.backbone.'):
            gram_key = 'gram_' + key
            torch.testing.assert_close(snap2.state[gram_key], value, msg=gram_key)
    # Refreshed after iterations 2 and 4 only (max_updates=2), recorded as events.
    assert runner2.message_hub.get_info('gram_teacher_refresh_iters') == [2, 4]
    model2 = runner2.model
    # Schedules: 2 warm-up iterations at 0 (gram) / 1 (local), cosine to 2.0 / 0.5.
    assert model2.gram_loss_weight == pytest.approx(2.0)
    assert model2.local_loss_weight == pytest.approx(0.5)
    assert (model2.gram_teacher.backbone.cls_token -
            state1['teacher.backbone.cls_token']).abs().max() > 0
    logs = open(osp.join(runner2.log_dir, f'{runner2.timestamp}.log')).read()
    assert 'Gram teacher refreshed from the EMA teacher at iteration 2' in logs
    assert 'Gram teacher refreshed from the EMA teacher at iteration 4' in logs
    assert 'train/gram_loss' in runner2.message_hub.log_scalars
    assert f'continuing stage "dinov3_vit-tiny_digits" from "{ckpt1}"' in logs
    ckpt2 = osp.join(work_dirs, 'dinov3_vit-tiny_digits_gram', 'iter_6.pth')
    state2 = torch.load(ckpt2, map_location='cpu', weights_only=True)['state_dict']
    assert any(k.startswith('gram_teacher.') for k in state2)

    # ---- stage 3: high-resolution adaptation from the stage-2 checkpoint
    cfg3 = _cfg('dinov3_vit-tiny_digits_hr.py', digits_root,
                osp.join(work_dirs, 'dinov3_vit-tiny_digits_hr'), 4)
    cfg3.train_dataloader.dataset.update(global_crops_sizes=[32, 48], local_crops_sizes=[16, 16],
                                         gram_teacher_crops_sizes=[48, 64])
    cfg3.train_dataloader.batch_sampler.ratios = [0.5, 0.5]
    cfg3.train_dataloader.batch_sampler.seed = 1
    snap3 = Snapshot()
    runner3 = _run(cfg3, snap3)
    for key, value in state2.items():
        if key.startswith('student.'):  # student restarted from the stage-2 teacher
            torch.testing.assert_close(snap3.state[key], state2['teacher.' + key[8:]], msg=key)
        elif key.startswith(('teacher.', 'gram_teacher.')):
            torch.testing.assert_close(snap3.state[key], value, msg=key)
    assert set(snap3.batch_sizes) <= {(32, 32), (48, 48)}
    assert runner3.iter == 4
    ckpt3 = osp.join(work_dirs, 'dinov3_vit-tiny_digits_hr', 'iter_4.pth')
    assert osp.isfile(ckpt3)
    state3 = torch.load(ckpt3, map_location='cpu', weights_only=True)['state_dict']

    # ---- stage 4: distillation; the frozen teacher is the stage-3 teacher, by convention
    cfg4 = _cfg('dinov3_vit-tiny_digits_distill.py', digits_root,
                osp.join(work_dirs, 'dinov3_vit-tiny_digits_distill'), 3)
    assert cfg4.model.teacher_ckpt is None and cfg4.load_from is None
    snap4 = Snapshot()
    runner4 = _run(cfg4, snap4)
    model4 = runner4.model
    assert model4.teacher_ckpt == ckpt3
    teacher_keys = [k for k in snap4.state if k.startswith('teacher.')]
    assert teacher_keys and len(teacher_keys) == len(
        [k for k in state3 if k.startswith('teacher.')])
    for key in teacher_keys:  # loaded before the first iteration, and frozen after
        torch.testing.assert_close(snap4.state[key], state3[key], msg=key)
        torch.testing.assert_close(model4.state_dict()[key], state3[key], msg=key)
    student = model4.student.backbone
    assert student.embed_dim == 32 and model4.teacher.backbone.embed_dim == 64
    moved = [k for k, v in model4.student.state_dict().items()
             if not torch.equal(v, snap4.state['student.' + k])]
    assert moved, 'the student did not train'
    assert runner4.iter == 3
    logs = open(osp.join(runner4.log_dir, f'{runner4.timestamp}.log')).read()
    assert (f'the frozen teacher is stage "dinov3_vit-tiny_digits_hr" from "{ckpt3}"'
            in logs)
    assert 'train/dino_local_crops_loss' in runner4.message_hub.log_scalars


def _other_width_checkpoint(path) -> str:
    """A stage-1 demo model with embed_dim 32 (the demo's is 64), saved to ``path``."""
    from dino_mm.registry import MODELS
    other = copy.deepcopy(Config.fromfile(osp.join(DEMO, 'dinov3_vit-tiny_digits.py')).model)
    other.backbone.embed_dim = 32
    torch.save({'state_dict': MODELS.build(other).state_dict()}, str(path))
    return str(path)


def test_distillation_stage_without_its_teacher_fails_before_training(digits_root, tmp_path):
    cfg = _cfg('dinov3_vit-tiny_digits_distill.py', digits_root,
               tmp_path / 'dinov3_vit-tiny_digits_distill', 2)
    with pytest.raises(FileNotFoundError, match=r'continues "dinov3_vit-tiny_digits_hr", but '
                       r'".*dinov3_vit-tiny_digits_hr/last_checkpoint" does not exist: run '
                       r'that(.|\n)*or set model\.teacher_ckpt'):
        Runner.from_cfg(cfg).train()
    # A teacher file of another architecture is refused by init_weights, naming the file.
    bad = _other_width_checkpoint(tmp_path / 'other_teacher.pth')
    cfg = _cfg('dinov3_vit-tiny_digits_distill.py', digits_root, tmp_path / 'w', 2,
               model=dict(teacher_ckpt=bad))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r'model\.teacher_ckpt: checkpoint ".*other_teacher'
                       r'\.pth" does not match'):
        runner.train()
    assert runner.iter == 0


def test_stage_with_missing_checkpoint_fails_before_training(digits_root, tmp_path):
    missing = str(tmp_path / 'nope' / 'iter_300.pth')
    cfg = _cfg('dinov3_vit-tiny_digits_gram.py', digits_root, tmp_path / 'w', 2,
               load_from=missing, model=dict(gram_ckpt=missing))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FileNotFoundError, match=r'load_from: checkpoint file ".*nope/iter_300'):
        runner.train()
    assert runner.iter == 0


def test_stage_with_incompatible_checkpoint_fails_before_training(
        digits_root, stage1, tmp_path):
    ckpt1, _ = stage1
    bad = _other_width_checkpoint(tmp_path / 'other_arch.pth')
    cfg = _cfg('dinov3_vit-tiny_digits_gram.py', digits_root, tmp_path / 'w', 2, load_from=bad,
               model=dict(gram_ckpt=ckpt1))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r'other_arch\.pth(.|\n)*shape mismatches(.|\n)*'
                       r'checkpoint \(1, 1, 32\) vs model \(1, 1, 64\)'):
        runner.train()
    assert runner.iter == 0
    # A stage whose previous stage has not run is refused, naming what to run.
    cfg = _cfg('dinov3_vit-tiny_digits_gram.py', digits_root, tmp_path / 'w2', 2)
    with pytest.raises(FileNotFoundError, match=r'continues "dinov3_vit-tiny_digits", but '
                       r'".*dinov3_vit-tiny_digits/last_checkpoint" does not exist: run that'):
        Runner.from_cfg(cfg).train()
    # Without previous_stage and load_from a stage is refused too.
    _hook(cfg, 'dino_mm.StageCheckpointHook')['previous_stage'] = None
    with pytest.raises(ValueError, match='load_from` is not set'):
        Runner.from_cfg(cfg).train()


@pytest.mark.parametrize('name,model_type', [
    ('dinov3_vitl16_im1k_lin834.py', 'dino_mm.DINOv3'),
    ('dinov3_vit7b16_pretrain.py', 'dino_mm.DINOv3'),
    ('dinov3_vit7b16_gram_anchor.py', 'dino_mm.DINOv3'),
    ('dinov3_vit7b16_high_res_adapt.py', 'dino_mm.DINOv3'),
    ('dinov3_vits16_distill-vitl16_im1k.py', 'dino_mm.DINOv3Distillation'),
    ('dinov3_vitl16_lvd1689m_distilled_multidist.py', 'dino_mm.MultiDistillation'),
])
def test_pretrain_configs_parse_with_official_values(name, model_type):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'pretrain', name))
    assert cfg.model.type == model_type
    hooks = {h['type']: h for h in cfg.custom_hooks}
    if name == 'dinov3_vitl16_im1k_lin834.py':
        bb = cfg.model.backbone
        assert (bb.num_register_tokens, bb.norm_layer, bb.mask_k_bias) == (0, 'layernorm', False)
        assert cfg.train_cfg.max_iters == 125000 and cfg.train_dataloader.batch_size == 64
        lr = cfg.param_scheduler[0]
        assert lr.scaling_rule == 'sqrt_wrt_1024_v3' and lr.base_value == 0.001
    if name == 'dinov3_vit7b16_gram_anchor.py':
        refresh = hooks['dino_mm.GramTeacherRefreshHook']
        # official it_first_update 1,010,000 counted from the start of pretraining
        assert refresh.it_first_update + 1_000_000 == 1_010_000
        assert (refresh.update_frequency, refresh.max_updates) == (10_000, 3)
        assert cfg.model.gram_ckpt == cfg.load_from
    if name == 'dinov3_vit7b16_high_res_adapt.py':
        assert cfg.train_dataloader.batch_sampler.ratios == [0.3, 0.3, 0.3, 0.05, 0.05]
        assert hooks['dino_mm.StageCheckpointHook'].student_from_teacher
    if model_type in ('dino_mm.DINOv3Distillation', 'dino_mm.MultiDistillation'):
        # The teacher is the previous stage's last checkpoint, found by convention.
        stage = hooks['dino_mm.StageCheckpointHook']
        assert stage.load_previous_as == 'teacher_ckpt' and cfg.model.teacher_ckpt is None
        assert stage.previous_stage == {
            'dino_mm.DINOv3Distillation': 'dinov3_vitl16_im1k_lin834',
            'dino_mm.MultiDistillation': 'dinov3_vit7b16_high_res_adapt'}[model_type]
        assert hooks['dino_mm.TeacherMomentumHook'].final_momentum_teacher == 1.0
    if model_type == 'dino_mm.MultiDistillation':
        assert list(cfg.model.students) == ['vits_mlp4_4', 'vitsp_swiglu6_1', 'vitb_mlp4_3',
                                            'vitl_mlp4_1']
