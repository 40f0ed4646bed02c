"""Local weight-file lookup for hub constructors (never downloads)."""
import os
import os.path as osp
from typing import List, Optional

__all__ = ['weights_dirs', 'find_weights', 'resolve_weights', 'warn_random_init']

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
                    default: str) -> str:
    """Turn the hub ``weights`` argument into an existing local file path.

    Args:
        model_name (str): Hub entry name, for messages.
        weights (str, optional): A local file or HF model folder, or a weights tag (e.g. 'LVD142M',
            'LVD1689M', 'SAT493M'); None means ``default``.
        file_names (dict): Tag -> official file name.
        default (str): Default tag.

    Raises:
        FileNotFoundError: Naming the expected file and where to put it.
    """
    tag = default if weights is None else str(weights)
    if tag.startswith(('http://', 'https://')):
        tag = tag.rsplit('/', 1)[-1]
    if tag.upper() in file_names:
        file_name = file_names[tag.upper()]
    elif osp.isfile(osp.expanduser(tag)) or _is_hf_folder(osp.expanduser(tag)):
        return osp.expanduser(tag)
    elif osp.basename(tag) in file_names.values():
        file_name = osp.basename(tag)
    else:
        raise FileNotFoundError(
            f'{model_name}: weights {weights!r} is neither an existing file nor one of the '
            f'tags {sorted(file_names)}.')
    path = find_weights(file_name)
    if path is None:
        raise FileNotFoundError(
            f'{model_name}: pretrained weights {file_name!r} were not found, and dino_mm never '
            f'downloads. Put the official file in ${ENV_WEIGHTS_DIR} or one of '
            f'{weights_dirs()}, or pass weights=<local path>.')
    return path


def warn_random_init(model_name: str, err: Exception) -> None:
    """The loud fallback of a hub constructor called with the default ``pretrained``.

    The official hub entries default to ``pretrained=True`` and download the weights;
    dino_mm never downloads. Called with the default and without the file, a constructor
    returns the official *random* init after this warning (an explicit ``pretrained=True``
    raises instead), so ``dino_mm.hub.dinov2_vits14()`` still gives a model offline but a
    user can never mistake it for the pretrained one.
    """
    import warnings
    bar = '!' * 78
    msg = (f'\n{bar}\n{model_name}: the official weights are not on this machine, so this '
           f'model has RANDOM weights.\n{err}\nPass pretrained=False to ask for the random '
           f'init without this warning, or pretrained=True to make a missing file an error.'
           f'\n{bar}')
    warnings.warn(msg, UserWarning, stacklevel=3)
