"""Fixtures shared by every test area: real images shipped by scikit-image, seeding."""
import random

import dino_mm  # noqa: F401  (first: applies the OpenMMLab compatibility fixes)

import os
import os.path as osp

import numpy as np
import pytest
import torch

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Subprocesses and spawned workers import `tools` / `tests.*` modules from the repository.
os.environ['PYTHONPATH'] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get('PYTHONPATH', '')) if p)


@pytest.fixture(autouse=True)
def _isolate_default_scope():
    """Runners set MMEngine's global default scope; do not let it leak between tests."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def real_images():
    """A few real RGB photographs (uint8 HxWx3) shipped with scikit-image."""
    from skimage import data
    return {
        'astronaut': data.astronaut(),
        'chelsea': data.chelsea(),
        'coffee': data.coffee(),
        'rocket': data.rocket(),
        'immunohistochemistry': data.immunohistochemistry(),
    }
