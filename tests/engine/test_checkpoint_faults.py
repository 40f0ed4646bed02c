"""Fault injection for the checkpoints a run writes and loads (SafeCheckpointHook).

* NaN / Inf weights or optimizer state are never checkpointed, never pointed at by
  ``last_checkpoint`` and never rotate the last good file away; training stops with an
  error naming the iteration and that file, and resuming from it works.
* A failed write (disk full) with ``max_keep_ckpts`` loses no checkpoint.
* ``last_checkpoint`` is replaced atomically; files get the user's umask.
* A checkpoint that fills no (or too little) of the model is refused, with its file
  name and key prefixes.
"""
import errno
import os
import os.path as osp
import uuid

import pytest
import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dino_mm.engine.checkpoint import (AtomicLocalBackend, CheckpointError,
                                       NonFiniteWeightsError,
                                       SafeCheckpointHook,
                                       atomic_torch_save, check_checkpoint_matches_model,
                                       find_non_finite_tensors, safe_torch_load)


class _Tiny(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.register_buffer('running', torch.zeros(2))

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return {'loss': F.mse_loss(out, labels)}
        return out


class _Data(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g), labels=torch.randn(2, generator=g))


class _Poison(Hook):
    """Make the weights (or optimizer state) non-finite after iteration ``at``.

    Runs before the checkpoint hook (NORMAL < VERY_LOW), as a diverging update would.
    """
    priority = 'NORMAL'

    def __init__(self, at, what):
        self.at, self.what = at, what

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 != self.at:
            return
        model = runner.model
        with torch.no_grad():
            if self.what == 'param':
                model.linear.weight[0, 0] = float('nan')
            elif self.what == 'buffer':
                model.running.fill_(float('inf'))
            else:
                state = runner.optim_wrapper.optimizer.state[model.linear.bias]
                state['exp_avg_sq'][0] = float('nan')


class _Record(Hook):
    """After each checkpoint save, record the inode of ``last_checkpoint``."""
    priority = 'LOWEST'

    def __init__(self):
        self.inodes = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.inodes.append(os.stat(osp.join(runner.work_dir, 'last_checkpoint')).st_ino)


def _runner(work_dir, max_iters, max_keep_ckpts=-1, hooks=(), resume=False):
    return Runner(
        model=_Tiny(), work_dir=str(work_dir), experiment_name=f'faults_{uuid.uuid4().hex}',
        train_dataloader=DataLoader(_Data(), batch_size=4, shuffle=False),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False,
                                           max_keep_ckpts=max_keep_ckpts)),
        # no PlainCheckpointHook: the checkpoint hook itself writes weights_only files
        custom_hooks=list(hooks), resume=resume, default_scope='dino_mm',
        log_level='WARNING')


def _ckpts(work_dir):
    return sorted(f for f in os.listdir(work_dir) if f.endswith('.pth'))


def _last_pointer(work_dir):
    return open(osp.join(work_dir, 'last_checkpoint')).read()


def test_checkpoint_hook_type_is_the_safe_one():
    assert MMENGINE_HOOKS.get('CheckpointHook') is SafeCheckpointHook


@pytest.mark.parametrize('what', ['param', 'buffer', 'optimizer'])
def test_non_finite_weights_are_never_checkpointed(tmp_path, what):
    wd = tmp_path / 'wd'
    runner = _runner(wd, max_iters=5, max_keep_ckpts=1, hooks=[_Poison(3, what)])
    with pytest.raises(NonFiniteWeightsError) as info:
        runner.train()
    msg = str(info.value)
    good = osp.join(str(wd), 'iter_2.pth')
    assert 'iteration 3' in msg and good in msg and 'iter_3.pth' in msg, msg
    # Nothing written, nothing rotated away, nothing pointed at.
    assert _ckpts(wd) == ['iter_2.pth']
    assert _last_pointer(wd) == good
    ckpt = safe_torch_load(good)
    tensors = list(ckpt['state_dict'].values()) + [
        v for st in ckpt['optimizer']['state'].values() for v in st.values()
        if isinstance(v, torch.Tensor)]
    assert all(torch.isfinite(t).all() for t in tensors)
    if what == 'param':
        assert 'linear.weight' in msg
    elif what == 'optimizer':
        assert "'exp_avg_sq' of linear.bias" in msg


def test_resume_from_the_last_good_checkpoint_works(tmp_path):
    wd = tmp_path / 'wd'
    with pytest.raises(NonFiniteWeightsError):
        _runner(wd, max_iters=5, max_keep_ckpts=1, hooks=[_Poison(3, 'param')]).train()
    # The advice of the message: resume from last_checkpoint (without the fault).
    runner = _runner(wd, max_iters=4, max_keep_ckpts=1, resume=True)
    runner.train()
    assert runner.iter == 4
    assert _ckpts(wd) == ['iter_4.pth']
    assert all(torch.isfinite(v).all()
               for v in safe_torch_load(str(wd / 'iter_4.pth'))['state_dict'].values())


def test_no_checkpoint_yet_says_so(tmp_path):
    with pytest.raises(NonFiniteWeightsError, match='iteration 1.*No checkpoint was '
                       'written before'):
        _runner(tmp_path / 'wd', max_iters=3, hooks=[_Poison(1, 'param')]).train()
    assert _ckpts(tmp_path / 'wd') == []
    assert not osp.exists(tmp_path / 'wd' / 'last_checkpoint')


def test_disk_full_keeps_every_good_checkpoint(tmp_path, monkeypatch):
    wd = tmp_path / 'wd'
    real_put = AtomicLocalBackend.put

    def put(self, obj, filepath):
        if str(filepath).endswith('iter_3.pth'):
            raise OSError(errno.ENOSPC, 'No space left on device', str(filepath))
        return real_put(self, obj, filepath)

    monkeypatch.setattr(AtomicLocalBackend, 'put', put)
    with pytest.raises(CheckpointError, match=r'iter_3\.pth.*No space left.*iter_2\.pth'):
        _runner(wd, max_iters=4, max_keep_ckpts=2).train()
    # mmengine removed iter_1 before writing iter_3: one good checkpoint lost.
    assert _ckpts(wd) == ['iter_1.pth', 'iter_2.pth']
    assert _last_pointer(wd) == osp.join(str(wd), 'iter_2.pth')
    assert not [f for f in os.listdir(wd) if f.endswith('.tmp')]
    # The rotation list inside iter_2 still lets a resumed run clean up iter_1 later.
    monkeypatch.undo()
    runner = _runner(wd, max_iters=4, max_keep_ckpts=2, resume=True)
    runner.train()
    assert _ckpts(wd) == ['iter_3.pth', 'iter_4.pth']


def test_rotation_still_keeps_max_keep_ckpts(tmp_path):
    wd = tmp_path / 'wd'
    _runner(wd, max_iters=5, max_keep_ckpts=2).train()
    assert _ckpts(wd) == ['iter_4.pth', 'iter_5.pth']
    assert safe_torch_load(str(wd / 'iter_5.pth'))['message_hub']['runtime_info'][
        'keep_ckpt_ids'] == [4, 5]


def test_last_checkpoint_is_replaced_atomically_with_the_umask(tmp_path):
    wd = tmp_path / 'wd'
    record = _Record()
    old_mask = os.umask(0o022)
    try:
        _runner(wd, max_iters=3, hooks=[record]).train()
    finally:
        os.umask(old_mask)
    # A new file renamed over the old one each time (in-place writes keep the inode,
    # and a reader could see it empty).
    assert len(set(record.inodes)) == 3, record.inodes
    assert _last_pointer(wd) == osp.join(str(wd), 'iter_3.pth')
    assert not [f for f in os.listdir(wd) if f.startswith('.')]
    # Published with the mode open() would give (not mkstemp's 0600).
    for name in ('iter_3.pth', 'last_checkpoint'):
        assert os.stat(wd / name).st_mode & 0o777 == 0o644, name


# ----------------------------------------------------------------- loading checks
def _cls_model():
    return nn.ModuleDict(dict(
        backbone=nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16)),
        head=nn.Linear(16, 3)))


def _pretrain_state(model):
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith('backbone.')}
    state = {}
    for net in ('teacher', 'student'):
        state.update({f'{net}.{k}': v.clone() for k, v in backbone.items()})
        state[f'{net}.dino_head.weight'] = torch.zeros(8, 16)
    return state


def test_pretraining_checkpoint_is_refused_with_prefixes(tmp_path):
    model = _cls_model()
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_matches_model(model, _pretrain_state(model), '/x/iter_10.pth')
    msg = str(info.value)
    assert '"/x/iter_10.pth"' in msg and '0 of its 10 tensors' in msg
    assert "'teacher.backbone.'" in msg and "'student.backbone.'" in msg
    assert "'backbone.'" in msg and "'head.'" in msg
    assert 'tools/convert/pretrain_to_backbone.py /x/iter_10.pth' in msg


def test_backbone_only_file_gets_a_hint():
    model = _cls_model()
    bare = {k[len('backbone.'):]: v for k, v in model.state_dict().items()
            if k.startswith('backbone.')}
    with pytest.raises(CheckpointError, match=r"(?s)'0\.'.*backbone-only file"):
        check_checkpoint_matches_model(model, bare, 'bb.pth')


def test_too_few_and_missing_parameters():
    model = _cls_model()
    sd = model.state_dict()
    only_head = {k: v for k, v in sd.items() if k.startswith('head.')}
    with pytest.raises(CheckpointError, match=r'(?s)fills 8\.6%.*min_loaded_fraction'):
        check_checkpoint_matches_model(model, only_head, 'head.pth')
    no_head = {k: v for k, v in sd.items() if not k.startswith('head.')}
    # Enough to fine-tune from (training), not enough to evaluate.
    out = check_checkpoint_matches_model(model, no_head, 'bb.pth')
    assert out['missing'] == ['head.weight', 'head.bias']
    with pytest.raises(CheckpointError, match=r"missing parameters, by prefix: 'head\.'"):
        check_checkpoint_matches_model(model, no_head, 'bb.pth', require_all_parameters=True)
    # A mis-shaped tensor does not count as loaded.
    bad = dict(sd, **{'head.weight': torch.zeros(5, 16)})
    with pytest.raises(CheckpointError, match=r'(?s)1 of 6 parameters missing.*1 tensors '
                       r"have the model's names but other shapes, e\.g\. head\.weight: "
                       r'checkpoint \(5, 16\) vs model \(3, 16\)'):
        check_checkpoint_matches_model(model, bad, 'x.pth', require_all_parameters=True)
    check_checkpoint_matches_model(model, sd, 'ok.pth', require_all_parameters=True)


def test_runner_load_from_refuses_another_models_checkpoint(tmp_path):
    """Runner.test(load_from=...) goes through the hook: error instead of a warning."""
    model = _Tiny()
    path = str(tmp_path / 'pretrain.pth')
    atomic_torch_save({'state_dict': {f'teacher.backbone.{k}': v
                                      for k, v in model.state_dict().items()}}, path)
    runner = Runner(
        model=_Tiny(), work_dir=str(tmp_path / 'wd'), experiment_name=f'load_{uuid.uuid4().hex}',
        load_from=path, default_scope='dino_mm', log_level='WARNING',
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)))
    with pytest.raises(CheckpointError, match=r"pretrain\.pth.*\n.*'teacher\.backbone\.'"):
        runner.load_or_resume()
    # The right checkpoint still loads.
    good = str(tmp_path / 'good.pth')
    atomic_torch_save({'state_dict': model.state_dict()}, good)
    runner._load_from, runner._has_loaded = good, False
    runner.load_or_resume()
    assert torch.equal(runner.model.linear.weight, model.linear.weight)


def test_find_non_finite_tensors_names_them():
    model = _Tiny()
    assert find_non_finite_tensors(model) == []
    with torch.no_grad():
        model.linear.bias[1] = float('-inf')
    assert find_non_finite_tensors(model) == ['linear.bias']
