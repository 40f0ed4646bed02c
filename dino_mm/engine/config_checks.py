"""Checks of a tool's config before the runner is built (tools/train.py, tools/test.py).

MMEngine accepts any ``--cfg-options`` key: a typo in a top-level name
(``train_dataloder.batch_size=4``) adds a key nothing reads, and an unknown argument of a
hook (``default_hooks.checkpoint.intervall=2``) only fails when the hook first uses it,
after the iterations are spent. :func:`validate_cfg_options` refuses both up front:

* a top-level key the config does not have is an error naming it and its close matches;
* a new key inside a dict with a ``type`` (a hook, a model part, a scheduler, ...) must
  be an argument of that class's ``__init__`` (skipped for classes that take
  ``**kwargs`` they hand on to something unknown).

A key meant to be new is written with a leading ``+`` (``+my_new_key=1``): it is merged
without these checks.

:func:`check_training_length` refuses ``max_iters`` / ``max_epochs`` <= 0, with which
MMEngine exits 0 having trained (and saved) nothing.
"""
import difflib
import inspect
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

__all__ = ['ConfigError', 'validate_cfg_options', 'check_training_length', 'NEW_KEY_PREFIX']

#: Leading character of a ``--cfg-options`` key that may add a new entry.
NEW_KEY_PREFIX = '+'

# Keys the builders consume themselves, whatever the class (MMEngine registries, the
# hook / scheduler / optimizer-wrapper builders of the runner).
_BUILDER_KEYS = {'type', '_scope_', '_delete_', 'priority', 'convert_to_iter_based'}
_OPTIM_WRAPPER_KEYS = {'constructor', 'paramwise_cfg', 'optimizer'}


class ConfigError(ValueError):
    """A config / ``--cfg-options`` problem found before the runner is built."""


def _close(word: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, sorted(set(choices)), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)" if matches else ''


def _registries() -> list:
    import dino_mm.registry as reg
    from mmengine.registry import Registry
    return [v for v in vars(reg).values() if isinstance(v, Registry)]


def resolve_type(type_: Any, scope: Optional[str], registries: Optional[list] = None) -> List[Any]:
    """The classes / functions a config ``type`` may denote, [] if unknown.

    Args:
        type_: The ``type`` value (a name, possibly scoped, or a class / function).
        scope (str, optional): The config's ``default_scope``.
        registries (list, optional): Registries to look in; defaults to all of dino_mm's.
    """
    if not isinstance(type_, str):
        return [type_] if callable(type_) else []
    import logging

    from mmengine.logging import MMLogger
    found = []
    # Registries without a child for ``scope`` warn about the fallback: this is a lookup,
    # not a build, so keep the user's output free of it.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for registry in (_registries() if registries is None else registries):
            try:
                with registry.switch_scope_and_registry(scope) as r:
                    obj = r.get(type_)
            except Exception:  # noqa: BLE001 - an unknown name or scope: not ours to judge
                obj = None
            if obj is not None and obj not in found:
                found.append(obj)
    finally:
        logger.setLevel(level)
    return found


def _closed_kwargs_classes() -> Dict[type, Set[str]]:
    """Classes whose ``**kwargs`` go somewhere known, with the extra names allowed there.

    ``CheckpointHook`` passes its ``**kwargs`` to ``runner.save_checkpoint`` next to every
    argument that method has, so no extra keyword is valid: an unknown one only fails at
    the first save.
    """
    from mmengine.hooks import CheckpointHook
    return {CheckpointHook: set()}


def _accepted_arguments(obj: Any) -> Optional[Set[str]]:
    """Keyword names ``obj(...)`` accepts; None when it takes arbitrary ``**kwargs``."""
    closed = _closed_kwargs_classes()
    if not inspect.isclass(obj):
        try:
            params = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind is not p.VAR_POSITIONAL}
    names: Set[str] = set()
    for klass in obj.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None or klass is object:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if klass in closed:
            return names | closed[klass]
        # **kwargs: follow them to the base class only towards a known closed class.
        if not any(issubclass(klass, c) and klass is not c for c in closed):
            return None
    return names


def _type_label(node: Mapping, pending: Mapping[str, Any], path: str) -> Tuple[Any, str]:
    type_ = pending.get(f'{path}.type', node.get('type'))
    return type_, (type_ if isinstance(type_, str) else getattr(type_, '__name__', type_))


def _check_key(cfg: Mapping, key: str, value: Any, options: Mapping[str, Any],
               scope: Optional[str]) -> None:
    parts = key.split('.')
    shown = f'--cfg-options {key}={value!r}'
    escape = (f' If the new key is intended, write it as {NEW_KEY_PREFIX}{key}=... '
              f'(keys with a leading "{NEW_KEY_PREFIX}" are merged unchecked).')
    if parts[0] not in cfg:
        raise ConfigError(
            f'{shown}: the config has no top-level key {parts[0]!r}'
            f'{_close(parts[0], cfg.keys())}, so the option would be silently ignored.'
            f'{escape}')
    node: Any = cfg[parts[0]]
    for depth, part in enumerate(parts[1:], start=1):
        parent = '.'.join(parts[:depth])
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f'{shown}: {parent} is a list of {len(node)} entry(ies); '
                                  f'{part!r} is not one of its indices (0..{len(node) - 1}).')
            node = node[int(part)]
            continue
        if not isinstance(node, Mapping):
            return  # replacing a value by a dict: MMEngine's merge says what it thinks
        if part in node or part.startswith('_'):
            node = node.get(part)
            continue
        if 'type' not in node and f'{parent}.type' not in options:
            if parent == 'optim_wrapper' and part in _OPTIM_WRAPPER_KEYS:
                return
            return  # a plain dict (env_cfg, randomness, ...): new keys are its business
        if part in _BUILDER_KEYS or (parent == 'optim_wrapper' and part in _OPTIM_WRAPPER_KEYS):
            return
        type_, label = _type_label(node, options, parent)
        node_scope = node.get('_scope_', scope)
        targets = resolve_type(type_, node_scope)
        if not targets:
            return  # unknown type: building it fails with the registry's own message
        accepted: Set[str] = set()
        for target in targets:
            names = _accepted_arguments(target)
            if names is None:
                return
            accepted |= names
        if part in accepted:
            return
        names = ', '.join(sorted(n for n in accepted if not n.startswith('_')))
        owner = '/'.join(getattr(t, '__name__', str(t)) for t in targets)
        closed = tuple(_closed_kwargs_classes())
        late = ('at its first checkpoint save, after the iterations are spent' if any(
            inspect.isclass(t) and issubclass(t, closed) for t in targets)
            else 'when the runner builds it')
        raise ConfigError(
            f"{shown}: {part!r} is not an argument of {owner} ({parent}, type={label!r})"
            f"{_close(part, list(accepted) + [k for k in node if isinstance(k, str)])}; "
            f'it would only fail {late}. Its arguments: {names}.{escape}')
    return


def validate_cfg_options(cfg: Mapping, options: Optional[Mapping[str, Any]]
                         ) -> Optional[Dict[str, Any]]:
    """Check ``--cfg-options`` against the loaded config; return them ready to merge.

    Args:
        cfg (Mapping): The config as loaded (before the options are merged).
        options (Mapping, optional): ``{dotted key: value}`` from ``DictAction``.

    Returns:
        dict | None: The options with the ``+`` of new keys removed.

    Raises:
        ConfigError: Naming the option, the key at fault, close matches and the escape.
    """
    if options is None:
        return None
    scope = cfg.get('default_scope', None) or 'dino_mm'
    plain = {k.lstrip(NEW_KEY_PREFIX): v for k, v in options.items()}
    for key, value in options.items():
        if key.startswith(NEW_KEY_PREFIX):
            continue
        _check_key(cfg, key, value, plain, scope)
    return plain


def check_training_length(cfg: Mapping) -> None:
    """Refuse ``train_cfg.max_iters`` / ``max_epochs`` that train nothing (<= 0)."""
    train_cfg = cfg.get('train_cfg', None)
    if not isinstance(train_cfg, Mapping):
        return
    for key, unit in (('max_iters', 'iterations'), ('max_epochs', 'epochs')):
        if key not in train_cfg:
            continue
        value = train_cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or int(value) != value:
            raise ConfigError(
                f'train_cfg.{key}={value!r}: training would run 0 {unit}, write no '
                f'checkpoint and still exit 0. Set it to a positive whole number of {unit} '
                f'(e.g. --cfg-options train_cfg.{key}=100); to only evaluate a checkpoint, '
                f'use tools/test.py.')
