"""Safe (weights_only) and atomic checkpoints: dino_mm/engine/checkpoint.py."""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

from dino_mm.engine.checkpoint import (AtomicLocalBackend, CheckpointError,
                                       atomic_torch_save, atomic_write_bytes,
                                       from_plain, safe_torch_load, to_plain)


def _message_hub_like():
    buf = HistoryBuffer()
    for v in (1.0, 2.5, 3.25):
        buf.update(v)
    return {
        'meta': {'seed': np.int64(3), 'lr': np.float32(0.5), 'cfg': 'x = 1'},
        'message_hub': {'log_scalars': {'train/loss': buf},
                        'runtime_info': {'iter': 7, 'arr': np.arange(4)}},
        'state_dict': {'w': torch.randn(3, 2)},
        'optimizer': {'state': {0: {'exp_avg': torch.ones(2)}}, 'param_groups': [{'lr': 0.1}]},
    }


def test_plain_roundtrip_is_weights_only_loadable(tmp_path):
    ckpt = _message_hub_like()
    path = str(tmp_path / 'ckpt.pth')
    atomic_torch_save(ckpt, path)
    # No global outside torch's own allow-list remains in the file.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    loaded = safe_torch_load(path)
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer)
    np.testing.assert_allclose(buf.data[0], [1.0, 2.5, 3.25])
    assert buf.current() == 3.25
    assert loaded['meta']['seed'] == 3 and isinstance(loaded['meta']['seed'], int)
    np.testing.assert_array_equal(loaded['message_hub']['runtime_info']['arr'], np.arange(4))
    assert torch.equal(loaded['state_dict']['w'], ckpt['state_dict']['w'])
    assert loaded['optimizer']['param_groups'][0]['lr'] == 0.1


def test_to_plain_from_plain_inverse_on_nested_containers():
    obj = {'a': (1, 2.0, 'x'), 'b': [np.float64(1.5), {'c': np.array([[1, 2]])}], 'd': {3, 4}}
    back = from_plain(to_plain(obj))
    assert back['a'] == (1, 2.0, 'x')
    assert back['b'][0] == 1.5
    np.testing.assert_array_equal(back['b'][1]['c'], np.array([[1, 2]]))
    assert back['d'] == {3, 4}


def test_mmengine_loader_uses_safe_loader(tmp_path):
    path = str(tmp_path / 'iter_2.pth')
    atomic_torch_save(_message_hub_like(), path)
    loaded = _load_checkpoint(path, map_location='cpu')
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'], HistoryBuffer)


@pytest.mark.parametrize('cut', [0, 10, 0.5])
def test_truncated_checkpoint_names_the_file(tmp_path, cut):
    path = str(tmp_path / 'iter_4.pth')
    atomic_torch_save(_message_hub_like(), path)
    data = open(path, 'rb').read()
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    with open(path, 'wb') as f:
        f.write(data[:n])
    with pytest.raises(CheckpointError, match='iter_4.pth.*(truncated or corrupt)'):
        _load_checkpoint(path, map_location='cpu')


def test_garbage_file_names_the_file(tmp_path):
    path = str(tmp_path / 'not_a_ckpt.pth')
    with open(path, 'wb') as f:
        f.write(b'hello, this is not a checkpoint' * 10)
    with pytest.raises(CheckpointError, match='not_a_ckpt.pth'):
        safe_torch_load(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing_here.pth'):
        safe_torch_load(str(tmp_path / 'nothing_here.pth'))


class _Custom:
    def __init__(self):
        self.x = 1


def test_unsafe_object_rejected_with_clear_message(tmp_path, monkeypatch):
    path = str(tmp_path / 'foreign.pth')
    torch.save({'obj': _Custom()}, path)
    monkeypatch.delenv('DINO_MM_TRUST_CHECKPOINTS', raising=False)
    with pytest.raises(CheckpointError, match=r'foreign\.pth.*refuses.*_Custom'):
        safe_torch_load(path)
    # The explicit opt-in loads it (for files the user trusts).
    monkeypatch.setenv('DINO_MM_TRUST_CHECKPOINTS', '1')
    assert safe_torch_load(path)['obj'].x == 1


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = str(tmp_path / 'iter_8.pth')
    atomic_write_bytes(b'old good checkpoint', path)

    from dino_mm.engine.checkpoint import atomic_write

    def killed_while_saving(tmp):
        with open(tmp, 'wb') as f:
            f.write(b'new c')
        raise KeyboardInterrupt('killed while saving')

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, killed_while_saving)
    assert open(path, 'rb').read() == b'old good checkpoint'
    # No temporary file is left behind either.
    assert sorted(os.listdir(tmp_path)) == ['iter_8.pth']


def test_mmengine_local_backend_is_atomic(tmp_path):
    backend = get_file_backend(str(tmp_path / 'x.pth'))
    assert isinstance(backend, AtomicLocalBackend)
    backend.put(b'abc', str(tmp_path / 'x.pth'))
    backend.put_text('last', str(tmp_path / 'last_checkpoint'))
    assert open(tmp_path / 'x.pth', 'rb').read() == b'abc'
    assert open(tmp_path / 'last_checkpoint').read() == 'last'
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def _write_forever(path):
    while True:
        atomic_torch_save({'w': torch.randn(2_000_000)}, path)


def test_killed_writer_process_leaves_previous_file_intact(tmp_path):
    """A writer killed with SIGKILL mid-save never truncates the published file."""
    import multiprocessing
    import signal
    import time
    path = str(tmp_path / 'big.pth')
    atomic_torch_save({'w': torch.zeros(10)}, path)
    old_size = osp.getsize(path)
    proc = multiprocessing.get_context('fork').Process(target=_write_forever, args=(path,))
    proc.start()
    deadline = time.time() + 60
    while osp.getsize(path) == old_size and time.time() < deadline:
        time.sleep(0.02)  # wait until the writer has published at least one new file
    assert osp.getsize(path) != old_size, 'writer process never saved'
    time.sleep(0.13)  # then kill it somewhere inside a later save
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    loaded = safe_torch_load(path)  # the published file is always complete
    assert loaded['w'].numel() == 2_000_000
