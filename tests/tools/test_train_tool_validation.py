"""tools/train.py, tools/test.py, convert_checkpoint.py on bad input (issue 18, weak cases):
typos in --cfg-options, max_iters=0, a broken last_checkpoint, stale temporary files of
killed saves, empty and directory checkpoints. Driven through subprocesses on the tiny
demo config."""
import os
import os.path as osp
import time

import torch

from dino_mm.engine.checkpoint import atomic_torch_save, safe_torch_load

from tests.tools.test_train_test_tools import CONFIG, PY, _opts, _run


def _no_traceback(p):
    assert 'Traceback' not in p.stderr, p.stderr[-3000:]


# ---------------------------------------------------------------- --cfg-options typos
def test_top_level_typo_is_refused_with_close_match(tmp_path, digits_root, tool_env):
    wd = str(tmp_path / 'wd')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd,
              *_opts(digits_root, 2, ['train_dataloder.batch_size=4'])], tool_env)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    _no_traceback(p)
    assert "'train_dataloder'" in p.stderr and "'train_dataloader'" in p.stderr, p.stderr
    assert '+train_dataloder.batch_size' in p.stderr, p.stderr  # the escape is named
    assert not osp.exists(osp.join(wd, 'iter_2.pth'))


def test_unknown_hook_argument_is_refused_before_training(tmp_path, digits_root, tool_env):
    wd = str(tmp_path / 'wd')
    t0 = time.time()
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd,
              *_opts(digits_root, 2, ['default_hooks.checkpoint.intervall=2'])], tool_env)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    _no_traceback(p)
    err = p.stderr
    assert "'intervall'" in err and "'interval'" in err and 'default_hooks.checkpoint' in err
    assert not osp.isdir(wd) or not any(n.endswith('.log') for _, _, fs in os.walk(wd)
                                        for n in fs), 'the runner was built'
    assert time.time() - t0 < 120


def test_test_tool_validates_options_too(tmp_path, digits_root, tool_env):
    p = _run([PY, 'tools/test.py', CONFIG, 'none', '--work-dir', str(tmp_path),
              '--cfg-options', f'test_dataloader.dataset.data_root={digits_root}',
              'test_evaluatr.topk=1'], tool_env)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "'test_evaluatr'" in p.stderr and "'test_evaluator'" in p.stderr, p.stderr


def test_help_documents_the_new_key_escape(tool_env):
    for tool in ('tools/train.py', 'tools/test.py'):
        p = _run([PY, tool, '--help'], tool_env)
        assert p.returncode == 0 and '+my_key=1' in ' '.join(p.stdout.split()), p.stdout


# ------------------------------------------------------------------------ max_iters=0
def test_zero_iterations_is_refused(tmp_path, digits_root, tool_env):
    wd = str(tmp_path / 'wd')
    opts = _opts(digits_root, 0)
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, *opts], tool_env)
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    _no_traceback(p)
    assert 'train_cfg.max_iters=0' in p.stderr and 'positive' in p.stderr, p.stderr


def test_check_training_length_epochs():
    import pytest
    from dino_mm.engine.config_checks import ConfigError, check_training_length
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match=f'max_epochs={bad}'):
            check_training_length({'train_cfg': {'type': 'EpochBasedTrainLoop',
                                                 'max_epochs': bad}})
    check_training_length({'train_cfg': {'max_epochs': 3}})


# ------------------------------------- --resume with a broken pointer, stale temporaries
def test_resume_past_empty_last_checkpoint_and_stale_tmp_cleanup(tmp_path, digits_root,
                                                                 tool_env):
    wd = str(tmp_path / 'wd')
    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, *_opts(digits_root, 4)],
             tool_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert osp.isfile(osp.join(wd, 'iter_2.pth')) and osp.isfile(osp.join(wd, 'iter_4.pth'))
    # kill -9 during a save and a truncated pointer: what the user finds afterwards
    open(osp.join(wd, 'last_checkpoint'), 'w').close()
    stale = osp.join(wd, '.iter_6.pth.q1w2e3r4.tmp')
    with open(stale, 'wb') as f:
        f.write(b'\0' * 4096)
    old = time.time() - 600
    os.utime(stale, (old, old))
    # the newest checkpoint has diverged (NaN weights): it must not be resumed from
    bad = safe_torch_load(osp.join(wd, 'iter_4.pth'))
    first = next(k for k, v in bad['state_dict'].items() if v.is_floating_point())
    bad['state_dict'][first] = torch.full_like(bad['state_dict'][first], float('nan'))
    atomic_torch_save(bad, osp.join(wd, 'iter_4.pth'))

    p = _run([PY, 'tools/train.py', CONFIG, '--work-dir', wd, '--resume',
              *_opts(digits_root, 6, ['+dino_mm_test_note=1'])], tool_env)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert 'resumed epoch: 0, iter: 2' in log, log[-4000:]
    assert 'last_checkpoint" is empty' in log and osp.join(wd, 'iter_2.pth') in log, log[-4000:]
    assert 'NaN' in log and 'iter_4.pth' in log
    assert not osp.exists(stale) and f'Removed "{stale}"' in log, log[-4000:]
    assert safe_torch_load(osp.join(wd, 'iter_6.pth'))['meta']['iter'] == 6
    assert not [n for n in os.listdir(wd) if n.endswith('.tmp')]


# ----------------------------------------------------- empty / directory checkpoints
def test_convert_tool_on_empty_file_says_empty(tmp_path, tool_env):
    for name in ('empty.pth', 'empty.safetensors'):
        src = str(tmp_path / name)
        open(src, 'wb').close()
        p = _run([PY, 'tools/convert/convert_checkpoint.py', src, str(tmp_path / 'out.pth')],
                 tool_env)
        assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
        _no_traceback(p)
        assert src in p.stderr and 'is empty (0 bytes)' in p.stderr, p.stderr


def test_test_tool_on_directory_says_directory(tmp_path, digits_root, tool_env):
    folder = tmp_path / 'iter_8.pth'
    folder.mkdir()
    (folder / '.metadata').write_bytes(b'\x80\x04N.')
    (folder / '__0_0.distcp').write_bytes(b'\0' * 8)
    p = _run([PY, 'tools/test.py', CONFIG, str(folder), '--work-dir', str(tmp_path / 'wd'),
              '--cfg-options', f'test_dataloader.dataset.data_root={digits_root}'], tool_env)
    assert p.returncode != 0
    assert f'"{folder}" is a directory' in p.stderr, p.stderr[-3000:]
    assert 'does not exist' not in p.stderr and 'consolidate_sharded.py' in p.stderr
