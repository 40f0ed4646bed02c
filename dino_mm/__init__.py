"""dino_mm: DINOv2 / DINOv3 for the OpenMMLab ecosystem.

Importing the package registers the core modules (backbones, heads, losses,
algorithms, datasets, hooks, evaluators). The mmseg / mmdet glue registers lazily
through the registries' ``locations``; call :func:`dino_mm.utils.register_all_modules`
to import everything at once.
"""
from .version import __version__
from .utils.compat import apply_compat_fixes

apply_compat_fixes()  # before anything imports mmpretrain / mmdet / mmseg

from . import datasets, engine, evaluation, models  # noqa: E402,F401
from . import hub  # noqa: E402,F401  (dino_mm.hub.dinov2_vitb14(...) after `import dino_mm`)
from .models import *  # noqa: E402,F401,F403

__all__ = ['__version__', 'hub']
