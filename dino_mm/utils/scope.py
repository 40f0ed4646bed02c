"""Registry scopes when dino_mm and OpenMMLab modules are mixed in one config.

MMEngine resolves a type without a prefix (``'CrossEntropyLoss'``) in the *current default
scope*. A module found through a prefix (``'mmseg.FCNHead'``) is built without switching
that scope, so the sub-modules it builds by bare name (its loss, its assigner) are looked
up in dino_mm's registry and not found. Two fixes:

* :func:`add_prefix_scopes` gives every ``type='mmseg.X'`` / ``'mmdet.X'`` /
  ``'mmpretrain.X'`` dict of a config ``_scope_`` = that package (what MMEngine's
  ``_scope_`` key is for), so the module is built in its own scope;
* :func:`builds_in_scope` makes a dino_mm class that extends an OpenMMLab class run its
  ``__init__`` in that package's scope, so the parent class finds its own parts.
"""
import functools
from typing import Any

from mmengine.registry import DefaultScope

__all__ = ['OPENMMLAB_SCOPES', 'add_prefix_scopes', 'builds_in_scope', 'prefix_scope']

OPENMMLAB_SCOPES = ('mmseg', 'mmdet', 'mmpretrain', 'mmcv')


def prefix_scope(cfg: Any):
    """The OpenMMLab scope named by ``cfg['type']`` ('mmseg.X' -> 'mmseg'), or None."""
    if not isinstance(cfg, dict) or '_scope_' in cfg:
        return None
    obj_type = cfg.get('type')
    if isinstance(obj_type, str) and '.' in obj_type:
        scope = obj_type.split('.', 1)[0]
        if scope in OPENMMLAB_SCOPES:
            return scope
    return None


def add_prefix_scopes(cfg: Any) -> Any:
    """Recursively add ``_scope_`` to OpenMMLab-prefixed type dicts, in place."""
    if isinstance(cfg, dict):
        scope = prefix_scope(cfg)
        if scope is not None:
            cfg['_scope_'] = scope
        for value in cfg.values():
            add_prefix_scopes(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            add_prefix_scopes(value)
    return cfg


def builds_in_scope(scope: str):
    """Class decorator: run ``__init__`` with ``scope`` as the default registry scope."""

    def decorate(cls):
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            with DefaultScope.overwrite_default_scope(scope):
                init(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls

    return decorate
