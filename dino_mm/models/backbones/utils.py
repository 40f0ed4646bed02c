"""Strict loading of official-layout backbone checkpoints."""
import os
import re
from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ['load_checkpoint_strict', 'unwrap_state_dict', 'flatten_block_chunks']

_WRAPPER_KEYS = ('state_dict', 'model', 'teacher', 'module')
_STRIP_PREFIXES = ('module.', 'backbone.')
_CHUNKED = re.compile(r'^blocks\.\d+\.(\d+)\.')


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj, prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Return the backbone tensors of a checkpoint object.

    Descends into the usual wrappers ('state_dict', 'model', 'teacher', 'module'), keeps
    only keys under ``prefix`` when given (and strips it), then strips leading
    'module.' / 'backbone.' prefixes shared by the keys. When a training checkpoint also
    holds heads (``backbone.*`` next to ``dino_head.*``), only ``backbone.*`` is kept.

    Args:
        obj: A state dict or a dict wrapping one.
        prefix (str, optional): Keep only keys starting with it, without it.
    """
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise TypeError(f'Expected a state dict, got {type(obj).__name__}.')
    sd = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    if prefix:
        sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items() if k.startswith(prefix))
        if not sd:
            raise KeyError(f'No key starts with prefix {prefix!r}; keys look like '
                           f'{list(obj)[:5]}.')
    for p in _STRIP_PREFIXES:
        if any(k.startswith(p) for k in sd):
            if not all(k.startswith(p) for k in sd) and p != 'backbone.':
                continue
            sd = OrderedDict((k[len(p):], v) for k, v in sd.items() if k.startswith(p))
    return sd


def flatten_block_chunks(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map FSDP-chunked keys ``blocks.{chunk}.{i}.*`` to flat ``blocks.{i}.*``."""
    return OrderedDict((_CHUNKED.sub(r'blocks.\1.', k), v) for k, v in state_dict.items())


def _describe(keys: Iterable[str], shapes: Mapping[str, torch.Size], limit: int = 20) -> str:
    keys = sorted(keys)
    lines = [f'    {k} {tuple(shapes[k])}' if k in shapes else f'    {k}' for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f'    ... and {len(keys) - limit} more')
    return '\n'.join(lines)


def load_checkpoint_strict(model: nn.Module,
                           path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                           prefix: Optional[str] = None, strict: bool = True,
                           map_location='cpu') -> Dict[str, list]:
    """Load an official-layout checkpoint into ``model``, failing loudly on mismatch.

    The file is read with ``torch.load(weights_only=True)``. Wrappers and 'module.' /
    'backbone.' prefixes are removed, and ``blocks.{c}.{i}`` (chunked, FSDP) and
    ``blocks.{i}`` (flat) layouts are converted to whichever the model uses.

    Args:
        model (nn.Module): Target model.
        path_or_state_dict (str | PathLike | Mapping): File path or state dict.
        prefix (str, optional): Only load keys under this prefix (e.g. 'backbone.').
        strict (bool): Raise on missing / unexpected / mis-shaped keys. Defaults to True.
        map_location: Passed to ``torch.load``. Defaults to 'cpu'.

    Returns:
        dict: ``missing_keys`` and ``unexpected_keys`` (empty when strict).
    """
    source = 'the given state dict'
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        if not os.path.isfile(source):
            raise FileNotFoundError(f'Checkpoint file {source!r} does not exist.')
        try:
            obj = torch.load(source, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f'Could not read checkpoint {source!r} with '
                               f'torch.load(weights_only=True): {e}') from e
    else:
        obj = path_or_state_dict
    ckpt = flatten_block_chunks(unwrap_state_dict(obj, prefix))

    target = model.state_dict()
    flat_to_model = {_CHUNKED.sub(r'blocks.\1.', k): k for k in target}
    model_shapes = {k: v.shape for k, v in target.items()}
    mapped, unexpected = OrderedDict(), []
    for k, v in ckpt.items():
        if k in flat_to_model:
            mapped[flat_to_model[k]] = v
        else:
            unexpected.append(k)
    missing = [k for k in target if k not in mapped]
    mis_shaped = [k for k, v in mapped.items() if v.shape != model_shapes[k]]
    if strict and (missing or unexpected or mis_shaped):
        parts = [f'Checkpoint {source} does not match {type(model).__name__}:']
        if missing:
            parts.append(f'  missing keys ({len(missing)}):\n' + _describe(missing, model_shapes))
        if unexpected:
            parts.append(f'  unexpected keys ({len(unexpected)}):\n' +
                         _describe(unexpected, {k: v.shape for k, v in ckpt.items()}))
        if mis_shaped:
            parts.append(f'  mis-shaped keys ({len(mis_shaped)}):\n' + '\n'.join(
                f'    {k}: checkpoint {tuple(mapped[k].shape)} vs model '
                f'{tuple(model_shapes[k])}' for k in mis_shaped[:20]))
        parts.append('  Check that the arch / constructor arguments match the checkpoint '
                     '(e.g. registers, ffn_layer, patch size, img_size) or pass prefix=.')
        raise RuntimeError('\n'.join(parts))
    for k in mis_shaped:
        mapped.pop(k)
    model.load_state_dict(mapped, strict=False)
    return dict(missing_keys=missing, unexpected_keys=unexpected)
