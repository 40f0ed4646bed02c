"""Compatibility fixes for the pinned OpenMMLab packages, applied at ``import dino_mm``.

The OpenMMLab packages are unmaintained since early 2024 (see ../shared/STACK.md); the
fixes live here instead of in site-packages, and each says what breaks without it.
"""
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys

__all__ = ['apply_compat_fixes']

_DEPENDENCY_MODULE = 'mmpretrain.utils.dependency'


def _transformers_major() -> int:
    try:
        return int(importlib.metadata.version('transformers').split('.')[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


class _DisableMMPretrainMultimodal(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Load ``mmpretrain.utils.dependency`` as usual, then set ``WITH_MULTIMODAL=False``.

    mmpretrain 1.2.0 turns its multi-modal models (BLIP, OFA, Flamingo, ...) on whenever
    transformers >= 4.28 is installed, and those modules import names that transformers 5
    removed, so ``import mmpretrain.models`` -- and with it ``mmdet.models`` and
    ``mmseg.models``, which import it -- fails (``TypeError: NoneType takes no
    arguments``). dino_mm uses transformers only as a test oracle and needs none of the
    multi-modal models; with the flag off mmpretrain registers its own placeholders for
    them, exactly as when transformers is not installed.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _DEPENDENCY_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.WITH_MULTIMODAL = False


def _disable_mmpretrain_multimodal_for_transformers5() -> None:
    if _transformers_major() < 5:
        return
    dep = sys.modules.get(_DEPENDENCY_MODULE)
    if dep is not None:  # mmpretrain.utils already imported (models not necessarily)
        dep.WITH_MULTIMODAL = False
        return
    if not any(isinstance(f, _DisableMMPretrainMultimodal) for f in sys.meta_path):
        sys.meta_path.insert(0, _DisableMMPretrainMultimodal())


def apply_compat_fixes() -> None:
    """Apply every fix; idempotent."""
    _disable_mmpretrain_multimodal_for_transformers5()
