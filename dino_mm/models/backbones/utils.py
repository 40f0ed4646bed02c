"""Strict loading of backbone checkpoints (official, HF transformers or timm layout)."""
import os
import re
from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ['load_checkpoint_strict', 'unwrap_state_dict', 'flatten_block_chunks',
           'to_official_layout', 'read_backbone_checkpoint', 'build_backbone_from_file',
           'backbone_cfg_for_file']

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


def _model_layout_hints(model: nn.Module) -> dict:
    """Family and arch facts the layout converter needs that HF / timm files do not store."""
    version = getattr(model, 'version', None)
    if version in ('v2', 'v3'):
        arch = getattr(model, 'arch_settings', {}) or {}
        hints = dict(family='dinov2_vit' if version == 'v2' else 'dinov3_vit',
                     head_dim=model.embed_dim // model.num_heads)
        if version == 'v3':
            hints['qkv_bias'] = bool(arch.get('qkv_bias', True))
            # HF / timm files lack the training-only local_cls_norm: refill it (a copy of
            # ``norm``) exactly when this model has one.
            hints['local_cls_norm'] = getattr(model, 'local_cls_norm', None) is not None
            if arch.get('pos_embed_rope_base'):
                hints['rope_base'] = float(arch['pos_embed_rope_base'])
        return hints
    if type(model).__name__ == 'DinoConvNeXt':
        return dict(family='dinov3_convnext')
    return {}


def to_official_layout(model: nn.Module, state_dict: Mapping[str, torch.Tensor]
                       ) -> tuple:
    """Convert a HF transformers / timm backbone state dict to the official layout.

    State dicts already in ``model``'s own keys (official layout), and those whose layout
    is not recognised, are returned unchanged (strict loading then names the mismatch).

    Returns:
        tuple: ``(state_dict, layout)``; ``layout`` is the detected source layout
        ('official', 'hf', 'timm') or None when it was not recognised.
    """
    from dino_mm.models.converters import LayoutError, convert_state_dict, detect_layout
    target = {_CHUNKED.sub(r'blocks.\1.', k) for k in model.state_dict()}
    if set(state_dict) == target:
        return state_dict, 'official'
    try:
        family, layout = detect_layout(state_dict)
    except LayoutError:
        return state_dict, None
    if layout == 'official':
        return state_dict, layout
    hints = _model_layout_hints(model)
    if hints.get('family', family) != family and 'dinov3_convnext' in (family, hints['family']):
        return state_dict, layout  # a ConvNeXt file for a ViT (or back): strict load says so
    try:
        official = convert_state_dict(state_dict, to='official', src=layout, **hints)
    except LayoutError:
        return state_dict, layout
    periods = model.state_dict().get('rope_embed.periods')
    if periods is not None and 'rope_embed.periods' in official:
        # Not learned: a function of the arch, which the HF / timm files do not record.
        official['rope_embed.periods'] = periods.detach().clone()
    return OrderedDict(official), layout


def read_backbone_checkpoint(path: Union[str, os.PathLike]):
    """Read a backbone checkpoint object from a file or a HF model folder.

    ``.safetensors`` files and HF folders (``config.json`` + ``model.safetensors`` /
    ``pytorch_model.bin``) are read directly; torch files with the safe unpickler
    (:func:`dino_mm.engine.checkpoint.safe_torch_load`).
    """
    from dino_mm.models.converters import read_checkpoint
    source = os.path.expanduser(os.fspath(path))
    if not (os.path.isfile(source) or os.path.isdir(source)):
        raise FileNotFoundError(f'Checkpoint file {source!r} does not exist.')
    return read_checkpoint(source)[0]


def load_checkpoint_strict(model: nn.Module,
                           path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                           prefix: Optional[str] = None, strict: bool = True,
                           map_location='cpu', source: Optional[str] = None,
                           unused: Sequence[str] = ()) -> Dict[str, list]:
    """Load a backbone checkpoint into ``model``, failing loudly on mismatch.

    This is the one backbone loader of dino_mm (hub ``weights=``, ``init_cfg=dict(
    type='Pretrained')``, ``backbone_checkpoint`` of the evaluations). It accepts:

    * a ``.pth`` / ``.pt`` / ``.bin`` file (read with the safe unpickler), a
      ``.safetensors`` file, a HF model folder (``config.json`` + ``model.safetensors``),
      or a state dict;
    * the official, HF transformers or timm layout (detected from the key names and
      converted exactly with :mod:`dino_mm.models.converters`);
    * wrappers and 'module.' / 'backbone.' prefixes (removed), and ``blocks.{c}.{i}``
      (chunked, FSDP) and ``blocks.{i}`` (flat) layouts, converted to whichever the
      model uses.

    Args:
        model (nn.Module): Target model.
        path_or_state_dict (str | PathLike | Mapping): File / folder path or state dict.
        prefix (str, optional): Only load keys under this prefix (e.g. 'backbone.').
        strict (bool): Raise on missing / unexpected / mis-shaped keys. Defaults to True.
        map_location: Ignored (tensors are loaded on the CPU, then copied into the
            model). Kept for backward compatibility.
        source (str, optional): Name of an already-read checkpoint object, for messages.
        unused (Sequence[str]): Official key names (or prefixes ending in '.') the model
            deliberately lacks and never uses; they are dropped, not reported (e.g. the
            final norm and mask token under :class:`~dino_mm.models.segmentation.
            ViTAdapter`). Defaults to none.

    Returns:
        dict: ``missing_keys`` and ``unexpected_keys`` (empty when strict).
    """
    source = source or 'the given state dict'
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        obj = read_backbone_checkpoint(source)
    else:
        obj = path_or_state_dict
    ckpt = flatten_block_chunks(unwrap_state_dict(obj, prefix))
    ckpt, layout = to_official_layout(model, ckpt)
    if unused:
        ckpt = OrderedDict((k, v) for k, v in ckpt.items()
                           if not any(k == u or (u.endswith('.') and k.startswith(u))
                                      for u in unused))

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
        read_as = (f' (read as the {layout} layout and converted to the official one)'
                   if layout in ('hf', 'timm') else '')
        parts = [f'Checkpoint {source}{read_as} does not match {type(model).__name__}:']
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


def build_backbone_from_file(path: Union[str, os.PathLike], arch: Optional[str] = None,
                             default_arch: Optional[str] = None, **overrides) -> nn.Module:
    """Build the ``DinoVisionTransformer`` a backbone file records and load it strictly.

    The one place where a backbone file decides its own architecture: files exported by
    ``tools/convert/pretrain_to_backbone.py`` record the constructor arguments under
    ``'dino_mm_arch'`` (see :data:`dino_mm.models.converters.ARCH_KEY`). Arguments are taken
    as ``overrides`` > the record > the defaults of ``arch``. Files without a record
    (official, HF, timm) need ``arch`` (and any overrides).

    Args:
        path: Backbone file or HF model folder.
        arch (str, optional): Expected arch name. None takes the record's; a different
            name than the record's is an error (the weights would not fit).
        default_arch (str, optional): Arch of a file without a record when ``arch`` is None.
        **overrides: ``DinoVisionTransformer`` arguments that win over the record.

    Returns:
        nn.Module: The loaded backbone (train mode as built; callers set eval).
    """
    from .vision_transformer import DinoVisionTransformer
    source = os.fspath(path)
    obj, record = _read_with_record(source)
    record = dict(record or {})
    recorded = record.pop('arch', None)
    if arch is None and recorded is None:
        arch = default_arch
    if arch is None and recorded is None:
        raise ValueError(f'{source} records no architecture (no "dino_mm_arch" entry: an '
                         'official / HF / timm file); pass the arch name (e.g. --arch '
                         'dinov2_vits14) and any overrides.')
    if arch is not None and recorded is not None and arch != recorded:
        raise ValueError(f'{source} records arch {recorded!r} ({record}), not {arch!r}: '
                         f'use {recorded!r} instead (e.g. dino_mm.hub.{recorded}(weights=...), '
                         f'or leave --arch unset).')
    model = DinoVisionTransformer(arch or recorded, **{**record, **overrides})
    load_checkpoint_strict(model, obj, source=source)
    return model


def resolve_backbone_file(checkpoint, what: str):
    """A backbone checkpoint named in a config or on a command line -> an existing path.

    Used by the ViT's ``init_cfg`` and by the frozen-feature evaluations'
    ``backbone_checkpoint`` (and so by ``tools/test.py CONFIG CHECKPOINT``): a path that
    exists (a file, or a HF transformers model folder) is used as given. Otherwise, when
    its file name is an official backbone file (``dinov2_vits14_pretrain.pth``, or
    ``checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`` as the shipped configs
    write it), it is looked up like the hub does (:func:`dino_mm.hub.resolve_weights`:
    ``$DINO_MM_WEIGHTS``, ``~/.cache/dino_mm/weights``, torch.hub's checkpoint folder).

    Args:
        checkpoint (str | PathLike | object): The reference; anything that is not a path
            (e.g. a state dict) is returned unchanged.
        what (str): Where the reference comes from, for the error message.

    Raises:
        FileNotFoundError: Naming the reference, the folders searched and what to do.
    """
    if not isinstance(checkpoint, (str, os.PathLike)):
        return checkpoint
    checkpoint = os.path.expanduser(os.fspath(checkpoint))
    if os.path.exists(checkpoint):
        return checkpoint
    # Imported here: dino_mm.hub builds on the backbones.
    from dino_mm.hub.backbones import BACKBONE_WEIGHTS
    from dino_mm.hub.utils import resolve_weights, weights_dirs
    official = {f for tags in BACKBONE_WEIGHTS.values() for f in tags.values()}
    if os.path.basename(checkpoint) not in official:
        raise FileNotFoundError(
            f'{what}: backbone checkpoint {checkpoint!r} does not exist (relative to '
            f'{os.getcwd()}), and it is not an official backbone file name that could be '
            f'looked up in {weights_dirs()}. Give the path of the file (official, HF '
            'transformers file or folder, timm, or a tools/convert/pretrain_to_backbone.py '
            'export).')
    name = f'{what} ({checkpoint!r}, not found relative to {os.getcwd()})'
    try:
        return resolve_weights(name, checkpoint, {f.upper(): f for f in official},
                               os.path.basename(checkpoint))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f'{e} Set the path of the file in the config (or on the command line), or '
            'init_cfg=None to train from random weights on purpose.') from None


def _read_with_record(source: str):
    from dino_mm.models.converters import read_arch_record
    obj = read_backbone_checkpoint(source)
    return obj, read_arch_record(obj, source)


def backbone_cfg_for_file(backbone: Mapping, path: Union[str, os.PathLike]) -> tuple:
    """A ``DinoVisionTransformer`` config with the architecture a backbone file records.

    For configs that name a backbone file (``backbone_checkpoint`` of the kNN / logistic
    regression / linear evaluations): when the file records its architecture (see
    :func:`build_backbone_from_file`), the record replaces the config's architecture
    arguments (``arch``, ``embed_dim``, ``depth``, ...); the config's other arguments
    (``out_type``, ``out_indices``, ...) are kept. Other configs and files without a record
    come back unchanged.

    Returns:
        tuple: ``(config, checkpoint_object)``; pass the object to
        :func:`load_checkpoint_strict` (``source=path``) so that the file is read once.
    """
    from dino_mm.models.converters import ARCH_ARGS
    source = os.fspath(path)
    obj, record = _read_with_record(source)
    cfg = dict(backbone)
    if record and 'VisionTransformer' in str(cfg.get('type', '')):
        cfg = {k: v for k, v in cfg.items() if k != 'arch' and k not in ARCH_ARGS}
        cfg.update(record)
    return cfg, obj


def build_frozen_backbone(backbone, backbone_checkpoint=None, source: str = 'backbone'):
    """Build a frozen evaluation backbone, with the weights of ``backbone_checkpoint``.

    The file is found like the hub finds official files (:func:`resolve_backbone_file`);
    the architecture it records (``tools/convert/pretrain_to_backbone.py``) replaces the
    config's, the file is read once and loaded strictly. It is loaded here, not through
    ``init_cfg``, because ``Runner.test()`` never calls ``init_weights``.

    Args:
        backbone (dict | nn.Module): Config (built through MODELS) or module.
        backbone_checkpoint (str, optional): Weights to load. Defaults to None.
        source (str): What names the file in errors. Defaults to 'backbone'.

    Returns:
        nn.Module: The backbone, with ``requires_grad`` off.
    """
    from dino_mm.registry import MODELS
    ckpt = None
    if backbone_checkpoint is not None:
        backbone_checkpoint = resolve_backbone_file(backbone_checkpoint, source)
        ckpt = backbone_checkpoint
        if isinstance(backbone, dict):
            backbone, ckpt = backbone_cfg_for_file(backbone, backbone_checkpoint)
    module = MODELS.build(backbone) if isinstance(backbone, dict) else backbone
    if backbone_checkpoint is not None:
        from dino_mm.models.backbones import load_checkpoint_strict
        load_checkpoint_strict(module, ckpt, source=str(backbone_checkpoint))
    module.requires_grad_(False)
    return module


class FrozenBackboneEvalMixin:
    """For evaluation models around a frozen backbone (the kNN / logistic-regression
    feature model and the linear-probe grid): the backbone is built and loaded by
    :func:`build_frozen_backbone`, its loaded weights survive ``init_weights``, and it stays
    in eval mode (no dropout, no RoPE train-time augmentation) while heads train."""

    def _init_frozen_backbone(self, backbone, backbone_checkpoint=None) -> None:
        self.backbone = build_frozen_backbone(
            backbone, backbone_checkpoint, f'{type(self).__name__}: model.backbone_checkpoint')
        # init_weights() keeps the weights of a backbone_checkpoint
        self._backbone_loaded = backbone_checkpoint is not None

    def init_weights(self) -> None:
        """The backbone's own init only (heads keep their construction-time init), unless
        its weights came from ``backbone_checkpoint``: those are never replaced."""
        if not self._backbone_loaded and hasattr(self.backbone, 'init_weights'):
            self.backbone.init_weights()

    def train(self, mode: bool = True):
        """Switch the heads' mode; the backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self
