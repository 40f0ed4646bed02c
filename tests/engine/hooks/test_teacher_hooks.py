"""TeacherMomentumHook / TeacherTempHook inside a real MMEngine runner."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from dino_mm.engine.hooks import TeacherMomentumHook, TeacherTempHook

from tests.oracles import require

oracle_utils = require('dinov2.utils.utils')


class _Data(Dataset):

    def __len__(self):
        return 32

    def __getitem__(self, idx):
        return dict(inputs=torch.full((4, ), float(idx)))


class _ToyDINO(nn.Module):
    """Student / EMA-teacher pair exposing the algorithm contract used by the hooks."""

    def __init__(self):
        super().__init__()
        self.student = nn.Linear(4, 4)
        self.teacher = nn.Linear(4, 4)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher_temp = None
        self.momenta = []
        self.temps_seen = []

    @torch.no_grad()
    def update_teacher(self, momentum):
        self.momenta.append(momentum)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)

    def train_step(self, data, optim_wrapper):
        # The temperature used by the forward pass of this iteration.
        self.temps_seen.append(self.teacher_temp)
        loss = (self.student(data['inputs']) - self.teacher(data['inputs'])).pow(2).mean() + \
            self.student(data['inputs']).mean()
        optim_wrapper.update_params(loss)
        return dict(loss=loss.detach())


def _run(tmp_path, hooks, max_iters, extra_hooks=()):
    model = _ToyDINO()
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(dataset=_Data(), batch_size=4,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        custom_hooks=list(hooks) + list(extra_hooks),
        default_hooks=dict(checkpoint=None, logger=None), default_scope='dino_mm')
    runner.train()
    return runner, model


def test_teacher_hooks_follow_official_schedules(tmp_path):
    max_iters, warm = 10, 4
    snapshots = []

    class Snapshot(Hook):
        priority = 'LOWEST'

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            m = runner.model
            snapshots.append((m.teacher.weight.clone(), m.student.weight.clone()))

    hooks = [dict(type='dino_mm.TeacherMomentumHook', momentum_teacher=0.9,
                  final_momentum_teacher=1.0),
             dict(type='dino_mm.TeacherTempHook', warmup_teacher_temp=0.04,
                  teacher_temp=0.07, warmup_iters=warm)]
    runner, model = _run(tmp_path, hooks, max_iters, [Snapshot()])
    mom_ref = oracle_utils.CosineScheduler(0.9, 1.0, total_iters=max_iters)
    temp_ref = oracle_utils.CosineScheduler(0.07, 0.07, total_iters=warm, warmup_iters=warm,
                                            start_warmup_value=0.04)
    assert model.momenta == pytest.approx([mom_ref[i] for i in range(max_iters)], abs=1e-15)
    assert model.temps_seen == pytest.approx([temp_ref[i] for i in range(max_iters)], abs=1e-15)
    # Hand-checked boundaries: no momentum warm-up, temperature endpoint included.
    assert model.momenta[0] == 0.9 and model.momenta[-1] < 1.0
    assert model.temps_seen[:warm] == pytest.approx([0.04, 0.05, 0.06, 0.07])
    assert model.temps_seen[warm:] == [0.07] * (max_iters - warm)
    # The EMA really moved the teacher towards the student, by the scheduled momentum.
    prev_teacher = None
    for it, (teacher, student) in enumerate(snapshots):
        if prev_teacher is not None:
            m = model.momenta[it]
            torch.testing.assert_close(teacher, m * prev_teacher + (1 - m) * student,
                                       rtol=1e-6, atol=1e-7)
        prev_teacher = teacher
    assert runner.message_hub.get_scalar('train/momentum_teacher').current() == \
        model.momenta[-1]


def test_momentum_hook_total_iters_and_bad_model(tmp_path):
    hook = TeacherMomentumHook(0.99, 1.0, total_iters=3)
    _, model = _run(tmp_path, [hook], 5)
    assert model.momenta[3:] == [1.0, 1.0]  # past total_iters: final value

    class NoEMA(nn.Linear):

        def train_step(self, data, optim_wrapper):
            return {}

    runner = Runner(model=NoEMA(4, 4), work_dir=str(tmp_path / 'b'),
                    train_dataloader=dict(dataset=_Data(), batch_size=4,
                                          sampler=dict(type='DefaultSampler'),
                                          collate_fn=dict(type='default_collate')),
                    train_cfg=dict(by_epoch=False, max_iters=1),
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                    custom_hooks=[TeacherMomentumHook()],
                    default_hooks=dict(checkpoint=None, logger=None))
    with pytest.raises(TypeError, match='update_teacher'):
        runner.train()


def test_temp_hook_beyond_warmup_without_runner():
    hook = TeacherTempHook(0.04, 0.07, warmup_iters=2)

    class FakeRunner:
        iter = 5
        model = _ToyDINO()

        class message_hub:  # noqa: N801
            @staticmethod
            def update_scalar(key, value):
                FakeRunner.logged = (key, value)

    hook.before_train_iter(FakeRunner, 0)
    assert FakeRunner.model.teacher_temp == 0.07
    assert FakeRunner.logged == ('train/teacher_temp', 0.07)
