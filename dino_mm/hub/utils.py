"""Local weight-file lookup for hub constructors (never downloads)."""
import os
import os.path as osp
from typing import Dict, List, NamedTuple, Optional, Sequence

__all__ = ['weights_dirs', 'find_weights', 'resolve_weights', 'warn_random_init',
           'WeightsRequest', 'resolve_entry_weights']

ENV_WEIGHTS_DIR = 'DINO_MM_WEIGHTS'


def weights_dirs() -> List[str]:
    """Folders searched for official weight files, in order.

    ``$DINO_MM_WEIGHTS`` (if set), ``~/.cache/dino_mm/weights`` and torch.hub's
    checkpoint cache (where ``torch.hub.load_state_dict_from_url`` puts the files).
    """
    dirs = []
    if os.environ.get(ENV_WEIGHTS_DIR):
        dirs.append(os.environ[ENV_WEIGHTS_DIR])
    dirs.append(osp.join(osp.expanduser('~'), '.cache', 'dino_mm', 'weights'))
    try:
        import torch.hub
        dirs.append(osp.join(torch.hub.get_dir(), 'checkpoints'))
    except Exception:  # noqa: BLE001 - the torch hub dir is only a convenience
        pass
    return dirs


def find_weights(file_name: str) -> Optional[str]:
    """Return the first existing ``<dir>/<file_name>`` among :func:`weights_dirs`."""
    for d in weights_dirs():
        path = osp.join(d, file_name)
        if osp.isfile(path):
            return path
    return None


def _is_hf_folder(path: str) -> bool:
    """A HF transformers model folder (``config.json`` + weights), loadable as weights."""
    return osp.isdir(path) and osp.isfile(osp.join(path, 'config.json'))


def resolve_weights(model_name: str, weights: Optional[str], file_names: dict,
                    default: str, arg: str = 'weights') -> str:
    """Turn the hub ``weights`` argument into an existing local file path.

    Args:
        model_name (str): Hub entry name, for messages.
        weights (str, optional): A local file or HF model folder, a folder holding the
            official file, a weights tag (e.g. 'LVD142M', 'LVD1689M', 'SAT493M', 'NYU'), or
            the URL / file name of an official file (looked up by its name); None means
            ``default``.
        file_names (dict): Tag -> official file name.
        default (str): Default tag.
        arg (str): Name of the argument ``weights`` came from, for messages
            (e.g. ``'backbone_weights'``). Defaults to ``'weights'``.

    Raises:
        FileNotFoundError: Naming the expected file and where to put it.
        ValueError: ``weights`` is a URL that names no official file (nothing is
            downloaded).
    """
    tag = default if weights is None else str(weights)
    url = tag if tag.startswith(('http://', 'https://')) else None
    if url:
        tag = tag.rsplit('/', 1)[-1]
    local = osp.expanduser(tag)
    if tag.upper() in file_names:
        file_name = file_names[tag.upper()]
    elif url and tag not in file_names.values():
        raise ValueError(
            f'{model_name}: {arg}={weights!r}: URLs cannot be fetched offline (dino_mm never '
            f'downloads). Download the file and pass its local path as {arg}=<path>.')
    elif not url and (osp.isfile(local) or _is_hf_folder(local)):
        return local
    elif not url and osp.isdir(local):  # a folder holding the official file
        wanted = file_names.get(default.upper(), default)
        path = osp.join(local, wanted)
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'{model_name}: {arg}={weights!r} is a folder without the official file '
                f'{wanted!r} (and not a HF model folder: no config.json). Put the file '
                f'there or pass its path as {arg}=<file>.')
        return path
    elif osp.basename(tag) in file_names.values():
        file_name = osp.basename(tag)
    else:
        raise FileNotFoundError(
            f'{model_name}: {arg}={weights!r} is neither an existing file (no such file or '
            f'folder) nor one of the tags {sorted(file_names)}.')
    path = find_weights(file_name)
    if path is None:
        raise FileNotFoundError(
            f'{model_name}: pretrained weights {file_name!r} were not found, and dino_mm never '
            f'downloads. Put the official file in ${ENV_WEIGHTS_DIR} or one of '
            f'{weights_dirs()}, or pass {arg}=<local path>.')
    return path


class WeightsRequest(NamedTuple):
    """One weights file a hub entry needs (a head, a backbone, a whole detector).

    Args:
        role (str): What the file holds, e.g. ``'head'`` or ``'backbone'``; the key of the
            result of :func:`resolve_entry_weights`.
        weights (str, optional): The user's argument (path, folder, tag or None), as taken
            by :func:`resolve_weights`.
        file_names (dict): Tag -> official file name.
        default (str): Default tag.
        explicit (bool): The user asked for this file themselves (``weights=PATH``): it
            is always loaded, and a missing one is always an error. Otherwise
            ``pretrained`` decides.
        arg (str): The argument name, for messages. Defaults to ``'weights'``.
    """
    role: str
    weights: Optional[str]
    file_names: Dict[str, str]
    default: str
    explicit: bool = False
    arg: str = 'weights'


def resolve_entry_weights(model_name: str, pretrained: Optional[bool],
                          requests: Sequence[WeightsRequest]) -> Dict[str, Optional[str]]:
    """The files of a multi-file hub entry (task heads: a head and a backbone file).

    Explicit requests are resolved with :func:`resolve_weights` (a missing file raises).
    The others follow the tri-state ``pretrained`` of the backbone entries:

    * ``False``: none is loaded (``None``);
    * ``True``: all are looked up; if any is missing, one ``FileNotFoundError`` names
      every missing file and where to put it;
    * ``None`` (the default, like the official ``pretrained=True``): all are looked up;
      if any is missing, none of them is loaded and :func:`warn_random_init` names every
      missing file -- a half-pretrained model is never returned by default.

    Returns:
        dict: role -> local path, or None where the part keeps its random init.
    """
    paths: Dict[str, Optional[str]] = {}
    missing: List[str] = []
    implicit = [r for r in requests if not r.explicit]
    for req in requests:
        if req.explicit:
            paths[req.role] = resolve_weights(model_name, req.weights, req.file_names,
                                              req.default, arg=req.arg)
    for req in implicit:
        paths[req.role] = None
        if pretrained is False:
            continue
        try:
            where = f'{model_name} ({req.role})' if len(requests) > 1 else model_name
            paths[req.role] = resolve_weights(where, req.weights, req.file_names,
                                              req.default, arg=req.arg)
        except FileNotFoundError as err:
            missing.append(str(err))
    if missing:
        err = FileNotFoundError('\n'.join(missing))
        if pretrained:
            raise err
        for req in implicit:
            paths[req.role] = None
        warn_random_init(model_name, err, parts=[r.role for r in implicit]
                         if len(implicit) < len(requests) else None)
    return paths


def warn_random_init(model_name: str, err: Exception,
                     parts: Optional[Sequence[str]] = None) -> None:
    """The loud fallback of a hub constructor called with the default ``pretrained``.

    The official hub entries default to ``pretrained=True`` and download the weights;
    dino_mm never downloads. Called with the default and without the file, a constructor
    returns the official *random* init after this warning (an explicit ``pretrained=True``
    raises instead), so ``dino_mm.hub.dinov2_vits14()`` still gives a model offline but a
    user can never mistake it for the pretrained one.

    Args:
        model_name (str): Hub entry name.
        err (Exception): The lookup error(s), naming every missing file.
        parts (sequence of str, optional): The parts left random when others were loaded
            from files the user passed explicitly (e.g. ``['backbone']``); None: the
            whole model is random.
    """
    import warnings
    bar = '!' * 78
    what = (f'its {" and ".join(parts)} {"have" if len(parts) > 1 else "has"}' if parts
            else 'this model has')
    msg = (f'\n{bar}\n{model_name}: the official weights are not on this machine, so '
           f'{what} RANDOM weights.\n{err}\nPass pretrained=False to ask for the random '
           f'init without this warning, or pretrained=True to make a missing file an error.'
           f'\n{bar}')
    warnings.warn(msg, UserWarning, stacklevel=3)
