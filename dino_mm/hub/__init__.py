"""Constructors named like the official torch.hub entries (see ``hubconf.py``).

Each area adds its own module here; heavy dependencies (mmseg, mmdet) are imported inside
the constructors, so importing this package stays cheap.
"""
from . import backbones, classifiers, convnext, depthers, detectors, dinotxt, segmentors
from .backbones import *  # noqa: F401,F403
from .classifiers import *  # noqa: F401,F403
from .convnext import *  # noqa: F401,F403
from .depthers import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .dinotxt import (dinov2_vitl14_reg4_dinotxt_tet1280d20h24l,  # noqa: F401
                      dinov3_vitl16_dinotxt_tet1280d20h24l)
from .segmentors import *  # noqa: F401,F403
from .utils import find_weights, resolve_weights, weights_dirs

__all__ = [
    *backbones.__all__, *classifiers.__all__, *convnext.__all__, *depthers.__all__,
    *detectors.__all__, 'dinov3_vitl16_dinotxt_tet1280d20h24l',
    'dinov2_vitl14_reg4_dinotxt_tet1280d20h24l', *segmentors.__all__, 'find_weights', 'resolve_weights', 'weights_dirs'
]
