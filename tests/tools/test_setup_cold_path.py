"""Cold-path test of the environment set-up, as a new user meets it.

``make setup-tests`` runs from a fresh clone with the Makefile's relative venv path, an
empty ``$HOME`` and an empty wheel cache, in the dry-run mode of ``tools/setup_env.sh``:
every step runs (venv creation, build tools, mmcv sdist download, unpacking and patching,
entering the source tree to build, editable install) except the long compile and the large
downloads, which are printed. A warm cache can therefore never again hide a set-up bug
(a relative path that stops resolving after ``cd``, compile parallelism taken from
``OMP_NUM_THREADS``, a cache key without the ops flavour).
"""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# The working tree's versions of what set-up reads (so uncommitted changes are tested too).
SETUP_FILES = ('Makefile', 'setup.py', 'tools/setup_env.sh', 'requirements')

pytestmark = pytest.mark.slow


def _fresh_clone(tmp_path):
    clone = tmp_path / 'clone'
    subprocess.run(['git', 'clone', '-q', ROOT, str(clone)], check=True)
    for rel in SETUP_FILES:
        src, dst = osp.join(ROOT, rel), clone / rel
        if osp.isdir(src):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    assert not (clone / '.venv').exists()
    return clone


def _cold_env(tmp_path, **extra):
    home = tmp_path / 'home'
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('DINO_MM_', 'VIRTUAL_ENV', 'PIP_', 'MAX_JOBS', 'CUDA'))}
    # The interpreter the suite runs on is a venv; set-up must start from the system one.
    env['PATH'] = os.pathsep.join(
        p for p in env.get('PATH', '').split(os.pathsep) if not p.startswith(sys.prefix))
    # $HOME is empty, so a pyenv shim must be told where pyenv lives.
    env.setdefault('PYENV_ROOT', osp.join(osp.expanduser('~'), '.pyenv'))
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / '.cache'), DINO_MM_DRY_RUN='1',
               DINO_MM_CACHE='cold_cache', OMP_NUM_THREADS='1', MAKEFLAGS='')
    env.update(extra)
    return env


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{out[-6000:]}'
    return out


def _nproc():
    return len(os.sched_getaffinity(0))


def test_make_setup_tests_cold_dry_run(tmp_path):
    clone = _fresh_clone(tmp_path)
    out = _run(['make', 'setup-tests'], clone, _cold_env(tmp_path))

    venv = clone / '.venv'
    assert (venv / 'bin' / 'python').is_file(), out
    # The mmcv build was entered from inside the unpacked sdist with absolute paths only.
    build = re.search(r'would run: env MMCV_WITH_OPS=1 MAX_JOBS=(\d+) (.*) wheel -q', out)
    assert build, out
    assert int(build.group(1)) == _nproc(), 'compile parallelism must not follow OMP_NUM_THREADS'
    assert f'{venv}/bin/python -m pip' in build.group(2)
    assert 'FORCE_CUDA=0' in build.group(2)
    # The relative DINO_MM_CACHE was made absolute and the key names the ops flavour.
    key = re.search(r'mmcv wheel cache: (\S+)', out).group(1)
    assert key == f'{clone}/cold_cache/wheels/mmcv-2.1.0-torch2.14.1-cp311-cpu', key
    # Heavy steps were printed, small ones really ran.
    assert 'would run:' in out and 'torch==2.14.1' in out
    assert "dinov2==0.0.1.dev2" in out  # the test oracle is part of setup-tests
    ver = subprocess.run([str(venv / 'bin' / 'python'), '-c',
                          'import importlib.metadata as m; print(m.version("dino_mm"))'],
                         capture_output=True, text=True)
    assert ver.returncode == 0 and ver.stdout.strip(), ver.stderr  # editable install ran
    # The start-up hook that lets mm* APIs be imported before dino_mm.
    assert list(venv.glob('lib/python3*/site-packages/dino_mm_startup.pth')), out
    assert 'dry-run done' in out
    # A second run is idempotent and reuses the venv.
    again = _run(['make', 'setup-tests'], clone, _cold_env(tmp_path))
    assert 'creating virtual environment' not in again


def test_cuda_dry_run_cache_key_and_commands(tmp_path):
    clone = _fresh_clone(tmp_path)
    env = _cold_env(tmp_path, DINO_MM_CUDA_VERSION='12.8', TORCH_CUDA_ARCH_LIST='8.0;9.0',
                    DINO_MM_TORCH_INDEX_URL='https://download.pytorch.org/whl/cu128')
    out = _run(['make', 'setup', 'VENV=gpu_venv', 'CUDA=1'], clone, env)
    key = re.search(r'mmcv wheel cache: (\S+)', out).group(1)
    # A CPU-only wheel and a CUDA wheel never share a cache entry.
    assert key.endswith('mmcv-2.1.0-torch2.14.1-cp311-cu128-sm8_0_9_0'), key
    assert 'FORCE_CUDA=1' in out and "TORCH_CUDA_ARCH_LIST=8.0\\;9.0" in out, out
    assert re.search(r'would run: .* install -q --extra-index-url '
                     r'https://download.pytorch.org/whl/cu128 xformers torch==2.14.1', out), out
    assert re.search(r'install -q --extra-index-url https://download.pytorch.org/whl/cu128 '
                     r'torch==2.14.1 torchvision==0.29.1', out), out
    assert (clone / 'gpu_venv' / 'bin' / 'python').is_file()


def test_cuda_without_a_cuda_version_fails_clearly(tmp_path):
    clone = _fresh_clone(tmp_path)
    # No torch in a dry run and no nvcc: nothing can say which CUDA to build for.
    env = _cold_env(tmp_path, DINO_MM_NVCC=str(tmp_path / 'no' / 'nvcc'))
    proc = subprocess.run(['make', 'setup', 'CUDA=1'], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert 'CUDA=1 but neither torch nor nvcc' in proc.stderr, proc.stderr
    assert 'reports a CUDA version' in proc.stderr
