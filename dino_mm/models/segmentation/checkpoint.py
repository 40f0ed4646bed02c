"""Conversion of official segmentation head checkpoints to dino_mm segmentor keys.

* DINOv2 linear / ms heads (mmseg-0.x ``BNHead``): ``decode_head.bn.*`` and
  ``decode_head.conv_seg.*`` are already our keys.
* DINOv3 linear heads: ``batchnorm_layer.*`` -> ``decode_head.bn.*`` and
  ``conv.*`` -> ``decode_head.conv_seg.*`` (any module prefix in front is dropped).
* Official *backbone* files (official ViT keys such as ``blocks.0.attn.qkv.weight``)
  can be merged in under ``backbone.`` so that one file drives ``tools/test.py``.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Union

import torch

StateDict = Dict[str, torch.Tensor]

_V3_RULES = [
    (re.compile(r'^(?:.*\.)?batchnorm_layer\.(.+)$'), 'decode_head.bn.{}'),
    (re.compile(r'^(?:.*\.)?conv\.(.+)$'), 'decode_head.conv_seg.{}'),
]
_HEAD_KEY = re.compile(r'^(?:module\.)?(decode_head\.(?:bn|conv_seg)\..+)$')


def load_state_dict_file(path: str) -> StateDict:
    """Load a checkpoint file (``weights_only=True``) and unwrap ``state_dict`` / ``model``.

    Args:
        path (str): Local checkpoint path.

    Returns:
        dict: Flat name -> tensor mapping.
    """
    # The shared safe loader: its messages name missing, empty, directory, text, truncated
    # and unsafe files (and only for the last suggest the trusted loader).
    from dino_mm.engine.checkpoint import safe_torch_load
    obj = safe_torch_load(path, map_location='cpu')
    for key in ('state_dict', 'model'):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise TypeError(f'{path!r} does not hold a state dict (got {type(obj).__name__}).')
    return OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))


def convert_seg_head_state_dict(state_dict: Mapping[str, torch.Tensor],
                                source: str = '<state_dict>') -> StateDict:
    """Map an official DINOv2 / DINOv3 linear-head state dict to dino_mm keys.

    Args:
        state_dict (Mapping[str, Tensor]): Official head weights.
        source (str): Name used in error messages (the file path).

    Returns:
        dict: ``decode_head.bn.*`` / ``decode_head.conv_seg.*`` tensors.
    """
    out: StateDict = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        if key.startswith('backbone.'):
            # A full segmentor checkpoint: backbone weights pass through.
            out[key] = value
            continue
        match = _HEAD_KEY.match(key)
        if match:
            out[match.group(1)] = value
            continue
        for pattern, template in _V3_RULES:
            m = pattern.match(key)
            if m:
                out[template.format(m.group(1))] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f'{source}: keys {unknown[:8]}{" ..." if len(unknown) > 8 else ""} are not '
            'linear segmentation head keys (expected decode_head.bn.* / '
            'decode_head.conv_seg.* for DINOv2 or batchnorm_layer.* / conv.* for DINOv3).')
    if not any(k.startswith('decode_head.conv_seg.') for k in out):
        raise KeyError(f'{source}: no classifier weights (conv_seg / conv) found.')
    return out


def build_segmentor_state_dict(head: Union[str, Mapping[str, torch.Tensor]],
                               backbone: Optional[Union[str, Mapping[str, torch.Tensor]]] = None
                               ) -> StateDict:
    """Combine a converted head and (optionally) official backbone weights.

    Args:
        head (str | Mapping): Head checkpoint path or state dict.
        backbone (str | Mapping, optional): Official-layout backbone checkpoint path or
            state dict, stored under ``backbone.``. Defaults to None.

    Returns:
        dict: State dict for :class:`DinoEncoderDecoder` with a linear head.
    """
    head_source = head if isinstance(head, str) else '<head state_dict>'
    head_sd = load_state_dict_file(head) if isinstance(head, str) else head
    out = convert_seg_head_state_dict(head_sd, head_source)
    if backbone is not None:
        bb = load_state_dict_file(backbone) if isinstance(backbone, str) else backbone
        for key, value in bb.items():
            for prefix in ('module.', 'backbone.'):
                if key.startswith(prefix):
                    key = key[len(prefix):]
            out['backbone.' + key] = value
    return out
