"""Fault injection for the checkpoint layer (issue 18, weak cases): empty files,
directories, text files named .pth, a broken ``last_checkpoint`` and the temporary files
of killed saves."""
import argparse
import os
import os.path as osp
import pickle
import time

import pytest
import torch

from dino_mm.engine.checkpoint import CheckpointError, atomic_torch_save, safe_torch_load

TRUST = 'DINO_MM_TRUST_CHECKPOINTS'


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST, raising=False)


# ------------------------------------------------------------------------- empty file
def test_empty_file_says_empty_in_the_shared_loader(tmp_path):
    path = str(tmp_path / 'dinov2_vits14_pretrain.pth')
    open(path, 'wb').close()
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    msg = str(info.value)
    assert f'"{path}" is empty (0 bytes)' in msg and 'download' in msg, msg


def test_empty_file_through_init_cfg_and_hub_loader(tmp_path):
    from dino_mm.models.backbones import DinoVisionTransformer, load_checkpoint_strict
    path = str(tmp_path / 'empty_backbone.pth')
    open(path, 'wb').close()
    model = DinoVisionTransformer('dinov2_vits14', img_size=16, patch_size=8, embed_dim=32,
                                  depth=1, num_heads=2,
                                  init_cfg=dict(type='Pretrained', checkpoint=path))
    from dino_mm.models.segmentation import load_state_dict_file as load_seg_file
    for load in (model.init_weights, lambda: load_checkpoint_strict(model, path),
                 lambda: load_seg_file(path)):
        with pytest.raises(Exception) as info:
            load()
        msg = str(info.value)
        assert path in msg and 'is empty (0 bytes)' in msg, msg
        assert 'weights_only=True): ' not in msg  # the old message with an empty reason


# -------------------------------------------------------------------------- directory
def _fake_sharded_folder(path):
    os.makedirs(path)
    open(osp.join(path, '.metadata'), 'wb').write(b'\x80\x04N.')
    open(osp.join(path, '__0_0.distcp'), 'wb').write(b'\0' * 16)
    atomic_torch_save({'meta': {'iter': 4}}, osp.join(path, 'meta.pth'))


def test_directory_is_named_a_directory(tmp_path):
    folder = str(tmp_path / 'some_folder.pth')
    os.makedirs(folder)
    atomic_torch_save({'state_dict': {}}, osp.join(folder, 'iter_4.pth'))
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(folder)
    msg = str(info.value)
    assert f'"{folder}" is a directory' in msg and 'does not exist' not in msg, msg
    assert osp.join(folder, 'iter_4.pth') in msg, msg  # what to pass instead


def test_sharded_folder_points_to_consolidate_tool(tmp_path):
    folder = str(tmp_path / 'iter_4.pth')
    _fake_sharded_folder(folder)
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(folder)
    msg = str(info.value)
    assert 'is a directory' in msg and 'sharded' in msg, msg
    assert f'tools/convert/consolidate_sharded.py {folder}' in msg, msg
    # The backbone loader (hub weights=, init_cfg, convert tools) says the same.
    from dino_mm.models.converters import load_state_dict_file
    with pytest.raises(CheckpointError, match='consolidate_sharded.py'):
        load_state_dict_file(folder)


# -------------------------------------------------------------------- text as a .pth
@pytest.mark.parametrize('text', [
    'hello, this is not a checkpoint\n' * 10,
    '1: the first line of a log\n2: and the next one\n',
    'config = dict(type="x")\nmodel = dict()\n',
    'version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1234\n',
    '<!DOCTYPE html><html><body>404 Not Found</body></html>\n',
])
def test_text_file_is_not_called_pickled_objects(tmp_path, text):
    path = str(tmp_path / 'model.pth')
    with open(path, 'w') as f:
        f.write(text)
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    msg = str(info.value)
    assert path in msg and 'not a checkpoint' in msg, msg
    assert TRUST not in msg, msg  # never advise the unsafe loader for a broken file
    if text.startswith('version https://git-lfs'):
        assert 'git lfs pull' in msg, msg


def test_random_bytes_are_corrupt_not_unsafe(tmp_path):
    path = str(tmp_path / 'noise.pth')
    gen = torch.Generator().manual_seed(0)
    data = bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist())
    with open(path, 'wb') as f:
        f.write(b'1' + data)  # starts with an opcode the safe unpickler rejects
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    msg = str(info.value)
    assert 'truncated or corrupt' in msg and TRUST not in msg, msg


@pytest.mark.parametrize('writer', ['torch_zip', 'torch_legacy', 'pickle'])
def test_real_pickled_objects_still_get_the_opt_in(tmp_path, writer):
    path = str(tmp_path / 'foreign.pth')
    obj = {'w': torch.zeros(2), 'args': argparse.Namespace(lr=0.1)}
    if writer == 'pickle':
        with open(path, 'wb') as f:
            pickle.dump({'args': argparse.Namespace(lr=0.1)}, f, protocol=2)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=writer == 'torch_zip')
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(path)
    msg = str(info.value)
    assert 'argparse.Namespace' in msg and TRUST in msg, msg


# ------------------------------------------------------------- resume: last_checkpoint
def _ckpt(path, value, it):
    atomic_torch_save({'state_dict': {'w': torch.full((3,), value)},
                       'optimizer': {'state': {0: {'exp_avg': torch.zeros(3)}}},
                       'meta': {'iter': it}}, path)


def test_resume_falls_back_past_an_empty_or_dangling_pointer(tmp_path):
    from dino_mm.engine.checkpoint import find_resume_checkpoint
    wd = str(tmp_path)
    for it in (35, 40):
        _ckpt(osp.join(wd, f'iter_{it}.pth'), 1.0, it)
    pointer = osp.join(wd, 'last_checkpoint')
    open(pointer, 'w').close()  # empty
    path, notes = find_resume_checkpoint(wd)
    assert path == osp.join(wd, 'iter_40.pth'), (path, notes)
    assert 'is empty' in notes[0]
    with open(pointer, 'w') as f:
        f.write(osp.join(wd, 'iter_45.pth'))  # rotated away / never completed
    path, notes = find_resume_checkpoint(wd)
    assert path == osp.join(wd, 'iter_40.pth') and 'iter_45.pth' in notes[0], notes
    # The newest one holds NaN weights: the newest finite one is taken.
    _ckpt(osp.join(wd, 'iter_40.pth'), float('nan'), 40)
    path, notes = find_resume_checkpoint(wd)
    assert path == osp.join(wd, 'iter_35.pth'), (path, notes)
    assert any('iter_40.pth' in n and 'NaN' in n for n in notes), notes
    # A good pointer is used as it is.
    with open(pointer, 'w') as f:
        f.write(osp.join(wd, 'iter_35.pth'))
    assert find_resume_checkpoint(wd) == (osp.join(wd, 'iter_35.pth'), [])


# ------------------------------------------------------------ stale temporary files
def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    from dino_mm.engine.checkpoint import clean_stale_temporary_files
    wd = str(tmp_path)
    start = time.time()
    old = start - 3600
    stale_file = osp.join(wd, '.iter_20.pth.k3j_x9a2.tmp')
    stale_ptr = osp.join(wd, '.last_checkpoint.abcdefgh.tmp')
    stale_dcp = osp.join(wd, 'iter_20.pth.tmp')
    live = osp.join(wd, '.iter_22.pth.zzzzzzzz.tmp')  # being written by this run
    keep_old_copy = osp.join(wd, 'iter_18.pth.old')  # the previous sharded checkpoint
    foreign = osp.join(wd, '.notes.tmp')  # not the writer's naming scheme
    user_dir = osp.join(wd, 'analysis.tmp')  # a folder with the user's own files
    for p in (stale_file, stale_ptr, live, foreign):
        open(p, 'wb').write(b'x' * 100)
    os.makedirs(stale_dcp)
    open(osp.join(stale_dcp, '__0_0.distcp'), 'wb').write(b'x')
    open(osp.join(stale_dcp, '.meta.pth.abcd_123.tmp'), 'wb').write(b'x')
    _fake_sharded_folder(keep_old_copy)
    os.makedirs(user_dir)
    open(osp.join(user_dir, 'plot.png'), 'wb').write(b'x')
    for p in (stale_file, stale_ptr, stale_dcp, keep_old_copy, foreign, user_dir):
        os.utime(p, (old, old))
    _ckpt(osp.join(wd, 'iter_18.pth'), 1.0, 18)
    removed = clean_stale_temporary_files([wd, wd], older_than=start)
    assert sorted(removed) == sorted([stale_file, stale_ptr, stale_dcp])
    for p in (live, keep_old_copy, foreign, user_dir, osp.join(wd, 'iter_18.pth')):
        assert osp.exists(p), p
    for p in removed:
        assert not osp.exists(p), p
