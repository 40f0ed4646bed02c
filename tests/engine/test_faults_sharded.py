"""Malicious sharded (DCP) checkpoints: no payload runs at any entry point.

A DCP folder holds a pickled ``.metadata`` and shard files whose non-tensor values are
pickles too. Each payload below would create a marker file when unpickled by the stock
loaders (``test_payloads_work_when_unpickled_unrestricted`` proves it); every dino_mm
entry point that reads a sharded checkpoint must refuse it with an error naming the file,
and the marker must never appear:

* ``read_sharded_state_dict`` and ``tools/convert/consolidate_sharded.py``,
* ``load_sharded_checkpoint``,
* ``DINOFSDPStrategy.load_checkpoint`` (``load_from``) and ``DINOFSDPStrategy.resume``.
"""
import dataclasses
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from dino_mm.engine.checkpoint import CheckpointError
from dino_mm.engine.fsdp import (DINOFSDPStrategy, load_sharded_checkpoint,
                                 read_sharded_state_dict, save_sharded_checkpoint,
                                 shard_dino_model)

from tests.engine.tiny_models import tiny_dino

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_MD = 'torch.distributed.checkpoint.metadata'
_FS = 'torch.distributed.checkpoint.filesystem'


# ------------------------------------------------------------------ payload pickles
def _str(s: str) -> bytes:
    """SHORT_BINUNICODE."""
    data = s.encode()
    assert len(data) < 256
    return b'\x8c' + bytes([len(data)]) + data


def _call_dotted(module: str, name: str, arg: str) -> bytes:
    """Protocol 4: STACK_GLOBAL(module, dotted name)(arg)."""
    return (b'\x80\x04' + _str(module) + _str(name) + b'\x93' + _str(arg) + b'\x85R.')


def _touch_cmd(marker: str) -> str:
    return f'touch "{marker}"'


def _exec_src(marker: str) -> str:
    return f'open({marker!r}, "w").close()'


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd, )


class _Exec:
    def __init__(self, src):
        self.src = src

    def __reduce__(self):
        return exec, (self.src, )


def _payload(kind: str, marker: str) -> bytes:
    if kind == 'p4-dotted-os.system':  # the hole of the old module-prefix check
        return _call_dotted(f'{_MD}', 'os.system', _touch_cmd(marker))
    if kind == 'p4-dotted-exec':  # builtins reached through modules DCP imports
        return _call_dotted(_FS, 'pickle.codecs.builtins.exec', _exec_src(marker))
    if kind == 'p4-dotted-pickle.loads':  # a nested, unrestricted pickle
        inner = pickle.dumps(_System(_touch_cmd(marker)), protocol=2)
        return (b'\x80\x04' + _str(_FS) + _str('pickle.loads') + b'\x93' + b'C' +
                bytes([len(inner)]) + inner + b'\x85R.')
    if kind == 'p2-reduce-os.system':
        return pickle.dumps(_System(_touch_cmd(marker)), protocol=2)
    if kind == 'p4-reduce-exec':
        return pickle.dumps(_Exec(_exec_src(marker)), protocol=4)
    if kind == 'p4-global-opcode-dotted':  # the text GLOBAL opcode after a PROTO 4 header
        return b'\x80\x04' + (f'c{_FS}\nos.system\n(V{_touch_cmd(marker)}\ntR.').encode()
    raise KeyError(kind)


METADATA_PAYLOADS = ['p4-dotted-os.system', 'p4-dotted-exec', 'p4-dotted-pickle.loads',
                     'p2-reduce-os.system', 'p4-reduce-exec', 'p4-global-opcode-dotted']
ENTRY_POINTS = ['read_sharded_state_dict', 'consolidate_sharded', 'load_sharded_checkpoint',
                'strategy.load_checkpoint', 'strategy.resume']


def test_payloads_work_when_unpickled_unrestricted(tmp_path):
    """Control: each payload does run under the plain unpickler (so the tests can fail)."""
    for kind in METADATA_PAYLOADS:
        marker = str(tmp_path / f'{kind}.marker')
        blob = tmp_path / f'{kind}.pkl'
        blob.write_bytes(_payload(kind, marker))
        code = ('import pickle, sys, torch.distributed.checkpoint.filesystem; '
                'pickle.load(open(sys.argv[1], "rb"))')
        subprocess.run([sys.executable, '-c', code, str(blob)], capture_output=True,
                       timeout=300)
        assert osp.exists(marker), f'payload {kind} did not run under pickle.load'


# ------------------------------------------------------------------ a real checkpoint
def _strategy(work_dir, seed=0):
    from mmengine.logging import MMLogger
    from mmengine.optim import OptimWrapper
    strategy = DINOFSDPStrategy(mixed_precision=None, work_dir=str(work_dir))
    strategy.model = shard_dino_model(tiny_dino(seed, perturb_student=False))
    strategy.optim_wrapper = OptimWrapper(
        torch.optim.AdamW(strategy.model.parameters(), lr=1e-3))
    strategy.logger = MMLogger.get_instance('test_faults_sharded')
    return strategy


@pytest.fixture(scope='module')
def legit_ckpt(group, tmp_path_factory):
    """A sharded checkpoint with model, optimizer (tensors and plain values) and meta."""
    root = tmp_path_factory.mktemp('legit')
    strategy = _strategy(root)
    out = strategy.model.student.backbone.forward_features(torch.randn(2, 3, 32, 32))
    out['x_norm_clstoken'].sum().backward()
    for p in strategy.model.parameters():  # a state for every parameter, as in training
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    strategy.optim_wrapper.step()  # optimizer state: exp_avg tensors, step, lr ...
    path = str(root / 'iter_1.pth')
    save_sharded_checkpoint(path, strategy._dcp_state(with_optim=True),
                            {'meta': {'iter': 1, 'seed': 0}})
    return path


def _own_metadata(path: str):
    """The index of a checkpoint this test module wrote itself (so plain pickle is fine)."""
    with open(osp.join(path, '.metadata'), 'rb') as f:
        return pickle.load(f)


def _copy(legit: str, tmp_path) -> str:
    dst = str(tmp_path / 'iter_1.pth')
    shutil.copytree(legit, dst)
    return dst


def _enter(entry: str, path: str, capsys):
    """Run one entry point on ``path``; return the error text it produced."""
    if entry == 'read_sharded_state_dict':
        with pytest.raises(CheckpointError) as err:
            read_sharded_state_dict(path)
        return str(err.value)
    if entry == 'consolidate_sharded':
        sys.path.insert(0, osp.join(ROOT, 'tools', 'convert'))
        try:
            from consolidate_sharded import main
        finally:
            sys.path.pop(0)
        assert main([path, osp.join(osp.dirname(path), 'out.pth')]) == 2
        assert not osp.exists(osp.join(osp.dirname(path), 'out.pth'))
        return capsys.readouterr().err
    strategy = _strategy(osp.dirname(path), seed=1)
    if entry == 'load_sharded_checkpoint':
        with pytest.raises(CheckpointError) as err:
            load_sharded_checkpoint(path, strategy._dcp_state(with_optim=True))
        return str(err.value)
    if entry == 'strategy.load_checkpoint':
        with pytest.raises(CheckpointError) as err:
            strategy.load_checkpoint(path)
        return str(err.value)
    if entry == 'strategy.resume':
        with pytest.raises(CheckpointError) as err:
            strategy.resume(path, resume_param_scheduler=False)
        return str(err.value)
    raise KeyError(entry)


@pytest.mark.parametrize('entry', ENTRY_POINTS)
@pytest.mark.parametrize('kind', METADATA_PAYLOADS)
def test_metadata_payload_never_runs(kind, entry, legit_ckpt, tmp_path, capsys):
    path = _copy(legit_ckpt, tmp_path)
    marker = str(tmp_path / 'pwned.marker')
    with open(osp.join(path, '.metadata'), 'wb') as f:
        f.write(_payload(kind, marker))
    try:
        message = _enter(entry, path, capsys)
    finally:  # checked first, even when the entry point failed in another way
        assert not osp.exists(marker), f'payload {kind} ran through {entry}'
    assert osp.join(path, '.metadata') in message, message
    assert 'not a DCP metadata file' in message and 'nothing from it was executed' in message


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_metadata_cannot_set_attributes_of_allowed_classes(entry, legit_ckpt, tmp_path,
                                                           capsys):
    """BUILD on a class object (not an instance) would patch DCP for the whole process."""
    from torch.distributed.checkpoint.metadata import Metadata
    path = _copy(legit_ckpt, tmp_path)
    blob = (b'\x80\x04' + _str(_MD) + _str('Metadata') + b'\x93' + b'N}' +
            _str('dino_mm_poisoned') + b'\x88s\x86b.')
    with open(osp.join(path, '.metadata'), 'wb') as f:
        f.write(blob)
    try:
        message = _enter(entry, path, capsys)
        assert not hasattr(Metadata, 'dino_mm_poisoned')
        assert osp.join(path, '.metadata') in message and 'BUILD' in message, message
    finally:
        if 'dino_mm_poisoned' in vars(Metadata):
            delattr(Metadata, 'dino_mm_poisoned')


def _bytes_payload_ckpt(legit: str, tmp_path, marker: str) -> str:
    """Valid metadata whose optimizer ``lr`` value points at a pickled os.system call."""
    path = _copy(legit, tmp_path)
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    metadata = _own_metadata(path)
    fqn = next(k for k, v in sorted(metadata.state_dict_metadata.items())
               if isinstance(v, BytesStorageMetadata) and k.startswith('optim.')
               and k.endswith('.lr'))
    evil = osp.join(path, 'evil.distcp')
    torch.save(_System(_touch_cmd(marker)), evil)
    index = next(k for k in metadata.storage_data if k.fqn == fqn)
    metadata.storage_data[index] = dataclasses.replace(
        metadata.storage_data[index], relative_path='evil.distcp', offset=0,
        length=osp.getsize(evil))
    with open(osp.join(path, '.metadata'), 'wb') as f:
        pickle.dump(metadata, f)  # only DCP classes: the metadata itself is legitimate
    return path


@pytest.mark.parametrize('entry', ['read_sharded_state_dict', 'consolidate_sharded',
                                   'load_sharded_checkpoint', 'strategy.resume'])
def test_shard_value_payload_never_runs(entry, legit_ckpt, tmp_path, capsys):
    """DCP reads non-tensor values with torch.load(weights_only=False); dino_mm does not."""
    marker = str(tmp_path / 'pwned.marker')
    path = _bytes_payload_ckpt(legit_ckpt, tmp_path, marker)
    try:
        message = _enter(entry, path, capsys)
    finally:
        assert not osp.exists(marker), f'the shard payload ran through {entry}'
    assert osp.join(path, 'evil.distcp') in message and 'weights_only' in message, message


def test_shard_value_payload_is_not_read_by_model_only_load(legit_ckpt, tmp_path):
    """load_from reads only the model tensors: the optimizer payload is never touched."""
    marker = str(tmp_path / 'pwned.marker')
    path = _bytes_payload_ckpt(legit_ckpt, tmp_path, marker)
    _strategy(tmp_path, seed=1).load_checkpoint(path)
    assert not osp.exists(marker)


def test_metadata_pointing_outside_the_folder_is_refused(legit_ckpt, tmp_path):
    path = _copy(legit_ckpt, tmp_path)
    metadata = _own_metadata(path)
    index = next(iter(metadata.storage_data))
    metadata.storage_data[index] = dataclasses.replace(
        metadata.storage_data[index], relative_path='../../etc/passwd')
    with open(osp.join(path, '.metadata'), 'wb') as f:
        pickle.dump(metadata, f)
    with pytest.raises(CheckpointError, match=r'outside the checkpoint folder'):
        read_sharded_state_dict(path)


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'not-metadata'])
def test_damaged_metadata_is_named(damage, legit_ckpt, tmp_path):
    path = _copy(legit_ckpt, tmp_path)
    meta = osp.join(path, '.metadata')
    data = open(meta, 'rb').read()
    with open(meta, 'wb') as f:
        f.write({'truncated': data[:len(data) // 2], 'empty': b'',
                 'not-metadata': pickle.dumps({'a': [1, 2]})}[damage])
    with pytest.raises(CheckpointError) as err:
        read_sharded_state_dict(path)
    assert meta in str(err.value)
    expected = 'not a DCP metadata file' if damage == 'not-metadata' else 'truncated or'
    assert expected in str(err.value)


def test_legit_checkpoint_still_loads_everywhere(legit_ckpt, tmp_path, capsys):
    """The safe readers accept what DINOFSDPStrategy writes, optimizer values included."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    ref = read_sharded_state_dict(legit_ckpt)
    assert 'teacher.backbone.cls_token' in ref
    # the full state (model + optimizer, tensors and plain values) into another model
    strategy = _strategy(tmp_path, seed=1)
    strategy.resume(legit_ckpt, resume_param_scheduler=False)
    full = strategy.model.teacher.backbone.cls_token.full_tensor()
    assert torch.equal(full, ref['teacher.backbone.cls_token'])
    optim = get_optimizer_state_dict(strategy.model, strategy._optimizer())
    steps = {float(s['step']) for s in optim['state'].values()}
    assert steps == {1.0}
    assert {g['lr'] for g in optim['param_groups']} == {1e-3}
    # model only (load_from) and the consolidation tool
    other = _strategy(tmp_path, seed=2)
    meta = other.load_checkpoint(legit_ckpt)
    assert meta['meta']['iter'] == 1
    assert torch.equal(other.model.student.backbone.pos_embed.full_tensor(),
                       ref['student.backbone.pos_embed'])
    sys.path.insert(0, osp.join(ROOT, 'tools', 'convert'))
    try:
        from consolidate_sharded import main
    finally:
        sys.path.pop(0)
    out = str(tmp_path / 'teacher.pth')
    assert main([legit_ckpt, out]) == 0, capsys.readouterr().err
    assert osp.getsize(out) > 0
