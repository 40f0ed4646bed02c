import os
import os.path as osp
import socket
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='session')
def digits_root(tmp_path_factory):
    """The embedded demo dataset (sklearn digits in the ImageNet layout), 16 px."""
    sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset
    out = str(tmp_path_factory.mktemp('digits'))
    make_digits_dataset(out, size=16)
    return out


@pytest.fixture
def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


@pytest.fixture
def tool_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env
