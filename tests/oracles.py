"""Importing the independent implementations (oracles) and optional stack parts in tests.

``pytest.importorskip`` would make the exactness tests silently vanish when an oracle is
missing. :func:`require` skips only on a developer's machine; under ``CI=true`` (what
``.ci/run`` sets) a missing module is a collection error that names it and how to install
it, so a green CI run always means the oracle tests ran.
"""
import importlib
import os

import pytest

# How each test-only module gets into the environment (tools/setup_env.sh does all of it).
_INSTALL = {
    'dinov2': "pip install --no-deps 'dinov2==0.0.1.dev2' (or: make setup-tests)",
    'onnx': 'pip install -r requirements/tests.txt (or: make setup-tests)',
    'mmcv.ops': 'bash tools/setup_env.sh (compiles mmcv 2.1.0 with ops)',
}


def in_ci() -> bool:
    return os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')


def require(modname: str):
    """Import ``modname`` for a test module; skip locally, fail under CI, if it is absent."""
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        top = modname.split('.')[0]
        how = _INSTALL.get(modname, _INSTALL.get(top, 'make setup-tests'))
        msg = (f'test oracle / dependency {modname!r} cannot be imported ({exc}); '
               f'install it with: {how}')
        if in_ci():
            pytest.fail(f'{msg}. CI=true: a missing oracle is an error, not a skip.',
                        pytrace=False)
        pytest.skip(msg, allow_module_level=True)
