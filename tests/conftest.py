"""Fixtures shared by every test area: real images shipped by scikit-image, seeding."""
import random

import dino_mm  # noqa: F401  (first: applies the OpenMMLab compatibility fixes)

import numpy as np
import pytest
import torch


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
