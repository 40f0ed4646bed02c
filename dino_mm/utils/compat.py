"""Compatibility fixes for the pinned OpenMMLab packages, applied at ``import dino_mm``.

The OpenMMLab packages are unmaintained since early 2024; the fixes live here instead of
in site-packages, and each says what breaks without it.
"""
from .startup_hook import install as _install_mmpretrain_transformers5_hook

__all__ = ['apply_compat_fixes']


def apply_compat_fixes() -> None:
    """Apply every fix; idempotent.

    * mmpretrain + transformers 5 (:mod:`dino_mm.utils.startup_hook`): also installed at
      interpreter start-up by ``tools/setup_env.sh``, so import order never matters there.
    """
    _install_mmpretrain_transformers5_hook()
