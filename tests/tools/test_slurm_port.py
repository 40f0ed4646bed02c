"""Rendezvous port of SLURM jobs: derived from the job id (and array index), user ports win.

Covers the one formula (dino_mm/utils/slurm.py), its use by the shell launchers (run with a
fake ``srun`` on PATH that records the environment it is started with), by the in-task
``--launcher slurm`` path of tools/train.py / tools/test.py, and by tools/submitit_train.py.
"""
import os
import os.path as osp
import stat
import subprocess
import sys

import pytest
from mmengine.config import Config

from dino_mm.utils.slurm import (FALLBACK_PORT, PORT_BASE, PORT_SPAN, derive_master_port,
                                 parse_job_id, resolve_master_port, setdefault_master_port)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
_SLURM_VARS = ('MASTER_PORT', 'PORT', 'SLURM_JOB_ID', 'SLURM_JOBID', 'SLURM_ARRAY_JOB_ID',
               'SLURM_ARRAY_TASK_ID')


@pytest.fixture
def clean_env(monkeypatch):
    for name in _SLURM_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------------ the formula
def test_parse_job_id_forms():
    assert parse_job_id('123') == (123, None)
    assert parse_job_id(123) == (123, None)
    assert parse_job_id('123_4') == (123, 4)
    assert parse_job_id(' 123_4.0 ') == (123, 4)  # a job step
    assert parse_job_id('123_[1-3]') == (123, None)  # a pending array: no single task
    assert parse_job_id('123_[1,5-7%2]') == (123, None)
    for bad in ('', 'abc', '12a', '123_', '123_x', '-5', '123_4_5'):
        with pytest.raises(ValueError, match='Cannot parse SLURM job id'):
            parse_job_id(bad)


def test_derived_ports_differ_between_jobs_and_array_tasks():
    assert derive_master_port('41234') != derive_master_port('41235')
    # 29500 + id % 1000 (the old submitit rule) gave job 41234 and 42234 the same port
    assert derive_master_port('41234') != derive_master_port('42234')
    # jobs scheduled together have nearby ids: no two of 2000 consecutive ids share a port
    ports = {derive_master_port(str(j)) for j in range(900_000, 902_000)}
    assert len(ports) == 2000
    # the tasks of one array differ from each other and (the first 93) from the plain jobs
    # submitted around it
    tasks = [derive_master_port(f'55000_{i}') for i in range(1000)]
    neighbours = [derive_master_port(str(j)) for j in range(54800, 55201)]
    assert len(set(tasks)) == 1000 and not set(tasks[:93]) & set(neighbours)
    # "A_I" and (A, I) are the same task; a contradicting pair is refused
    assert derive_master_port('55000_7') == derive_master_port('55000', '7')
    with pytest.raises(ValueError, match='array task'):
        derive_master_port('55000_7', 8)
    for port in tasks + neighbours + list(ports):
        assert PORT_BASE <= port < PORT_BASE + PORT_SPAN
        assert port not in (29400, 29500)  # torch's own defaults


def test_resolve_user_port_wins_and_array_ids(clean_env):
    env = {'SLURM_JOB_ID': '777'}
    assert resolve_master_port(env) == derive_master_port(777)
    assert resolve_master_port(dict(env, MASTER_PORT='4242')) == 4242
    # array tasks: SLURM_ARRAY_JOB_ID + SLURM_ARRAY_TASK_ID, not the per-task SLURM_JOB_ID
    arr = dict(env, SLURM_ARRAY_JOB_ID='700', SLURM_ARRAY_TASK_ID='3')
    assert resolve_master_port(arr) == derive_master_port('700_3')
    # an explicit submitit id beats the variables, a user port beats both
    assert resolve_master_port(arr, job_id='900_1') == derive_master_port('900_1')
    assert resolve_master_port(dict(arr, MASTER_PORT='4242'), job_id='900_1') == 4242
    assert resolve_master_port({}) is None
    with pytest.raises(ValueError, match=r"MASTER_PORT='http' is not a TCP port"):
        resolve_master_port(dict(env, MASTER_PORT='http'))
    with pytest.raises(ValueError, match='MASTER_PORT'):
        resolve_master_port(dict(env, MASTER_PORT='70000'))
    out = {}
    assert setdefault_master_port(out) == FALLBACK_PORT and out['MASTER_PORT'] == '29500'


def test_in_task_slurm_launcher_sets_derived_port(clean_env, tmp_path):
    """tools/train.py / test.py call apply_common_args before MMEngine's init_dist reads
    MASTER_PORT; the CPU path (_slurm_env_to_torch_env) uses the same port."""
    from dino_mm.engine.runner_utils import _slurm_env_to_torch_env, apply_common_args
    clean_env.setenv('SLURM_JOB_ID', '31337')
    apply_common_args(Config(dict()), 'a.py', str(tmp_path), 'none')
    assert 'MASTER_PORT' not in os.environ
    apply_common_args(Config(dict()), 'a.py', str(tmp_path), 'slurm')
    assert os.environ['MASTER_PORT'] == str(derive_master_port(31337))
    clean_env.setenv('MASTER_PORT', '23456')  # the user's port is kept
    apply_common_args(Config(dict()), 'a.py', str(tmp_path), 'slurm')
    assert os.environ['MASTER_PORT'] == '23456'

    clean_env.delenv('MASTER_PORT')
    for name, value in (('SLURM_PROCID', '0'), ('SLURM_NTASKS', '1'),
                        ('SLURM_NODELIST', 'localhost'), ('MASTER_ADDR', '127.0.0.1'),
                        ('SLURM_ARRAY_JOB_ID', '31000'), ('SLURM_ARRAY_TASK_ID', '2')):
        clean_env.setenv(name, value)
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        clean_env.delenv(name, raising=False)
    _slurm_env_to_torch_env()
    assert os.environ['MASTER_PORT'] == str(derive_master_port('31000_2'))


# ------------------------------------------------------------------ the shell launchers
FAKE_SRUN = '''#!/usr/bin/env bash
# Records the environment srun is started with; runs nothing.
env > "$FAKE_SRUN_ENV"
'''


@pytest.fixture
def fake_srun(tmp_path):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    srun = bindir / 'srun'
    srun.write_text(FAKE_SRUN)
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return str(bindir)


def _launch(script, bindir, tmp_path, extra_env):
    env = {k: v for k, v in os.environ.items() if k not in _SLURM_VARS}
    env.update(PATH=f'{bindir}{os.pathsep}{env["PATH"]}', PYTHON=sys.executable,
               FAKE_SRUN_ENV=str(tmp_path / 'srun.env'), **extra_env)
    args = ['part', 'job', 'configs/demo/vit-tiny_cls_digits.py']
    if script == 'slurm_test.sh':
        args.append('ckpt.pth')
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    seen = {}
    if proc.returncode == 0:
        for line in open(tmp_path / 'srun.env').read().splitlines():
            key, _, value = line.partition('=')
            seen[key] = value
    return proc, seen


@pytest.mark.parametrize('script', ['slurm_train.sh', 'slurm_test.sh'])
def test_shell_launchers_export_derived_port(script, fake_srun, tmp_path):
    cases = [
        (dict(SLURM_JOB_ID='4242'), str(derive_master_port(4242))),
        (dict(SLURM_JOB_ID='4243'), str(derive_master_port(4243))),
        (dict(SLURM_ARRAY_JOB_ID='4200', SLURM_ARRAY_TASK_ID='3', SLURM_JOB_ID='4245'),
         str(derive_master_port('4200_3'))),
        (dict(SLURM_JOB_ID='4242', PORT='23456'), '23456'),
        (dict(SLURM_JOB_ID='4242', MASTER_PORT='23457'), '23457'),
        (dict(SLURM_JOB_ID='4242', MASTER_PORT='23457', PORT='23456'), '23456'),
        ({}, None),  # outside an allocation: every task derives it from its own job id
    ]
    got = []
    for extra, expected in cases:
        proc, seen = _launch(script, fake_srun, tmp_path, extra)
        assert proc.returncode == 0, (extra, proc.stderr)
        got.append(seen.get('MASTER_PORT'))
        assert seen.get('MASTER_PORT') == expected, (extra, seen.get('MASTER_PORT'))
    assert got[0] != got[1] != got[2]
    proc, _ = _launch(script, fake_srun, tmp_path, dict(SLURM_JOB_ID='4242', PORT='auto'))
    assert proc.returncode != 0 and "PORT='auto' is not a TCP port" in proc.stderr


# ----------------------------------------------------------------------------- submitit
def _submitit_tool():
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        import submitit_train
    finally:
        sys.path.pop(0)
    return submitit_train


def test_submitit_array_job_ids_get_distinct_ports():
    tool = _submitit_tool()
    env = {}
    # int('123_4') used to raise here for every array task
    got = tool.set_rendezvous_env('123_4', ['node-a', 'node-b'], env)
    assert got == dict(MASTER_ADDR='node-a', MASTER_PORT=str(derive_master_port('123_4')))
    ports = {tool.set_rendezvous_env(f'123_{i}', ['node-a'], {})['MASTER_PORT']
             for i in range(8)}
    ports.add(tool.set_rendezvous_env('123', ['node-a'], {})['MASTER_PORT'])
    assert len(ports) == 9
    kept = tool.set_rendezvous_env('123_4', ['node-a'], dict(MASTER_PORT='23456',
                                                             MASTER_ADDR='head'))
    assert kept == dict(MASTER_ADDR='head', MASTER_PORT='23456')
    with pytest.raises(ValueError, match="Cannot parse SLURM job id 'job-7'"):
        tool.set_rendezvous_env('job-7', ['node-a'], {})
    with pytest.raises(RuntimeError, match='no host names'):
        tool.set_rendezvous_env('123', [], {})


def test_submitit_missing_gives_install_hint(monkeypatch, capsys, tmp_path):
    tool = _submitit_tool()
    monkeypatch.setitem(sys.modules, 'submitit', None)  # what an absent package does
    assert tool.main(['configs/demo/vit-tiny_cls_digits.py', '--work-dir',
                      str(tmp_path)]) == 2
    assert 'pip install submitit' in capsys.readouterr().err
    with pytest.raises(ImportError, match='pip install submitit'):
        tool.Trainer(tool.parse_args(['c.py']), str(tmp_path))()
