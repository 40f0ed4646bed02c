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
    """A port that is free now, taken *below* the kernel's ephemeral range.

    ``bind(0)`` hands out an ephemeral port, which the kernel may give to another
    process's outgoing connection (gloo opens many in the parallel tests) before the
    launched job binds it (EADDRINUSE). Ports under the ephemeral range are only ever
    taken by an explicit bind.
    """
    import random
    try:
        low = int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, min(low, 32768) - 1)
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
            except OSError:
                continue
            return str(port)
    raise RuntimeError('no free TCP port found between 20000 and the ephemeral range')


#: torch.distributed variables an in-process test may leave in os.environ; a tool launched
#: from a test must not inherit them (its launcher sets its own).
DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
             'MASTER_PORT', 'GROUP_RANK', 'TORCHELASTIC_RUN_ID')


@pytest.fixture
def tool_env():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env
