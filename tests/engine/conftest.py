"""Fixtures shared by the engine tests."""
import pytest
import torch.distributed as dist


@pytest.fixture(scope='module')
def group():
    """A one-process gloo group, for code that needs ``torch.distributed`` initialised."""
    if dist.is_initialized():
        pytest.skip('a process group already exists in this test process')
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
