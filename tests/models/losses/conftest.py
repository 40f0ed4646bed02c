"""Fixtures for the SSL loss tests."""
import pytest
import torch.distributed as dist


@pytest.fixture
def gloo_group(tmp_path):
    """A 1-process gloo group: the official iBOT Sinkhorn-Knopp all-reduces unconditionally."""
    if dist.is_initialized():
        pytest.skip('a process group is already initialised by another test')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg_store"}', rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()
