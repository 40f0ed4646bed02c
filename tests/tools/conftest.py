import os.path as osp
import sys

import pytest

from tests.distributed import free_port as _free_port
from tests.distributed import launch_env

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='session')
def digits_root(tmp_path_factory):
    """The embedded demo dataset (sklearn digits in the ImageNet layout), 16 px."""
    sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
    from make_digits_dataset import make_digits_dataset
    out = str(tmp_path_factory.mktemp('digits'))
    make_digits_dataset(out, size=16)
    return out


@pytest.fixture(scope='session')
def captions_root(tmp_path_factory):
    """The training digits with templated captions in the COCO-Captions layout, 16 px."""
    sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
    from make_digits_captions import write_digits_captions
    out = str(tmp_path_factory.mktemp('digits_captions'))
    write_digits_captions(out, image_size=16)
    return out


@pytest.fixture
def free_port():
    """A port that is free now, below the ephemeral range (``tests.distributed.free_port``)."""
    return _free_port()


@pytest.fixture
def tool_env():
    env = launch_env()
    env.setdefault('OMP_NUM_THREADS', '1')
    return env
