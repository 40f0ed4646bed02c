"""Import hook that keeps mmpretrain importable next to transformers 5.

Standard library only, and importable without importing :mod:`dino_mm`: ``tools/setup_env.sh``
copies this file into the environment's ``site-packages`` as ``_dino_mm_startup.py`` with a
``dino_mm_startup.pth`` that installs the hook when Python starts, so a user's own script
may import ``mmseg.apis`` / ``mmdet.apis`` / ``mmpretrain`` before (or without) ``dino_mm``.
``import dino_mm`` installs the same hook (see :mod:`dino_mm.utils.compat`) for
environments made without the set-up script.

Why: mmpretrain 1.2.0 turns on its multi-modal models (BLIP, OFA, Flamingo, ...) whenever
transformers >= 4.28 is installed, and those modules subclass names that transformers 5
removed, so ``import mmpretrain.models`` -- and with it ``mmdet.models`` and
``mmseg.models``, which import it -- fails with ``TypeError: NoneType takes no arguments``.
dino_mm needs none of the multi-modal models (transformers is only a test oracle here);
with ``WITH_MULTIMODAL = False`` mmpretrain registers its own placeholders for them,
exactly as when transformers is absent. Pinning transformers 4.x instead would lose the
HF oracles that exist only in 5.x.
"""
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys

TARGET = 'mmpretrain.utils.dependency'


def transformers_major() -> int:
    try:
        return int(importlib.metadata.version('transformers').split('.')[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


class DisableMMPretrainMultimodal(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Load ``mmpretrain.utils.dependency`` as usual, then set ``WITH_MULTIMODAL=False``
    when transformers >= 5 is installed (checked only when mmpretrain is imported)."""

    dino_mm_hook = True  # marker: one hook per interpreter, whichever copy installed it

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
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
        if transformers_major() >= 5:
            module.WITH_MULTIMODAL = False


def install() -> None:
    """Install the hook once; fix the flag at once if mmpretrain.utils is already loaded."""
    dep = sys.modules.get(TARGET)
    if dep is not None:
        if transformers_major() >= 5:
            dep.WITH_MULTIMODAL = False
        return
    if not any(getattr(f, 'dino_mm_hook', False) for f in sys.meta_path):
        sys.meta_path.insert(0, DisableMMPretrainMultimodal())
