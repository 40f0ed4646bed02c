"""Fully sharded pretraining of DINO student/teacher models (PyTorch FSDP2) for MMEngine.

Why not MMEngine's ``FSDPStrategy`` (0.10.7, marked experimental):

* it wraps the *whole* model in one FSDP1 unit with ``device_id=LOCAL_RANK`` (CUDA only),
  so the EMA teacher lives inside the student's wrapping and cannot be updated shard by
  shard against an identically sharded student;
* its "local" checkpoints are per-rank pickles written in place (a kill during save
  corrupts the newest checkpoint) and they can only be resumed on the same world size;
* it has no per-sub-module mixed precision (the official recipe reduces the heads'
  gradients in fp32 but the backbone's in half precision).

:class:`DINOFSDPStrategy` shards with ``torch.distributed.fsdp.fully_shard`` (FSDP2), which
runs on CPU/gloo as well as CUDA/NCCL, keeps the original parameter names (DTensor
parameters, so :class:`~dino_mm.LayerDecayOptimWrapperConstructor` sees official names) and
composes with ``torch.distributed.checkpoint`` (DCP) for resharding-friendly checkpoints.
"""
import copy
import datetime
import functools
import os
import os.path as osp
import pickle
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import mmengine
import torch
import torch.distributed as dist
from mmengine.device import get_device
from mmengine.dist import init_dist
from mmengine.model import BaseDataPreprocessor, is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapperDict
from mmengine.utils import get_git_hash
from mmengine._strategy import DDPStrategy
from torch import nn

from dino_mm.registry import STRATEGIES
from .checkpoint import (CheckpointError, atomic_torch_save, is_sharded_checkpoint,
                         safe_load_bytes, safe_torch_load)

__all__ = [
    'DINOFSDPStrategy', 'shard_dino_model', 'shard_model_units', 'has_fsdp_units',
    'frozen_components', 'reshard_fsdp', 'compile_backbone_blocks', 'MIXED_PRECISION_PRESETS',
    'fsdp_update_teacher', 'check_identical_sharding',
    'save_sharded_checkpoint', 'load_sharded_checkpoint', 'is_sharded_checkpoint',
    'read_sharded_state_dict', 'read_dcp_metadata', 'META_FILE'
]

META_FILE = 'meta.pth'
_DCP_METADATA = '.metadata'
_DTYPES = {
    'fp32': torch.float32, 'float32': torch.float32, 'fp16': torch.float16,
    'float16': torch.float16, 'half': torch.float16, 'bf16': torch.bfloat16,
    'bfloat16': torch.bfloat16, None: None
}


# FSDP2 precision presets of DINOv2-style models (docs/reference.md §3.10): half-precision
# parameters and compute, fp32 gradient reductions for the student heads, fp32 buffers (loss
# centers) and fp32 sharded master weights. The teacher's entries also cover the other frozen
# components (the DINOv3 Gram teacher).
# 'fp16' is the official DINOv2 table; fp16 gradients need loss scaling, so the strategy asks
# for an optim wrapper with a ``loss_scaler`` (dino_mm.FP16OptimWrapper: ShardedGradScaler).
def _dino_precision(dtype: str) -> dict:
    """The official per-module table in ``dtype``: backbone reductions in ``dtype``, the
    student heads' in fp32, the teacher's parameters in ``dtype`` (it never reduces)."""
    student = dict(backbone=dict(param_dtype=dtype, reduce_dtype=dtype),
                   dino_head=dict(param_dtype=dtype, reduce_dtype='fp32'),
                   ibot_head=dict(param_dtype=dtype, reduce_dtype='fp32'))
    teacher = {name: dict(param_dtype=dtype) for name in student}
    return dict(student=student, teacher=teacher)


FP16_MIXED_PRECISION = _dino_precision('fp16')
# 'bf16' (the strategy's default): the same table in bf16, which needs no loss scaling (the
# official DINOv3 recipes compute in bf16).
DEFAULT_MIXED_PRECISION = _dino_precision('bf16')
MIXED_PRECISION_PRESETS = {'fp16': FP16_MIXED_PRECISION, 'bf16': DEFAULT_MIXED_PRECISION}
# Backbone methods the DINO algorithms call instead of ``forward``; FSDP2 only hooks
# ``forward`` unless told otherwise.
_FORWARD_METHODS = ('forward_features', 'get_intermediate_layers')


def _to_dtype(value: Union[str, torch.dtype, None], where: str) -> Optional[torch.dtype]:
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in _DTYPES:
        raise ValueError(f'DINOFSDPStrategy: {where}={value!r} is not a dtype; use one of '
                         f"{sorted(k for k in _DTYPES if k)} or None (fp32).")
    return _DTYPES[value]


def _policy_dtypes(mixed_precision, prefix: str = ''):
    """``(path, dtype)`` of every ``param_dtype`` in a (nested) mixed_precision dict."""
    for key, value in (mixed_precision or {}).items():
        if not isinstance(value, dict):
            continue
        path = f'{prefix}.{key}' if prefix else str(key)
        if 'param_dtype' in value:
            yield path, _to_dtype(value['param_dtype'], f'{path}.param_dtype')
        yield from _policy_dtypes(value, path)


def _mp_policy(cfg: Optional[dict], where: str):
    from torch.distributed.fsdp import MixedPrecisionPolicy
    cfg = dict(cfg or {})
    unknown = set(cfg) - {'param_dtype', 'reduce_dtype', 'output_dtype'}
    if unknown:
        raise KeyError(f'DINOFSDPStrategy: unknown keys {sorted(unknown)} in mixed_precision.'
                       f'{where}; allowed: param_dtype, reduce_dtype, output_dtype.')
    return MixedPrecisionPolicy(
        param_dtype=_to_dtype(cfg.get('param_dtype'), f'{where}.param_dtype'),
        reduce_dtype=_to_dtype(cfg.get('reduce_dtype'), f'{where}.reduce_dtype'),
        output_dtype=_to_dtype(cfg.get('output_dtype'), f'{where}.output_dtype'))


def _blocks(backbone: nn.Module) -> List[nn.Module]:
    flat = getattr(backbone, '_flat_blocks', None)
    if callable(flat):
        return list(flat())
    blocks = getattr(backbone, 'blocks', None)
    if blocks is None:
        return []
    return [b for b in blocks if not isinstance(b, nn.Identity)]


def shard_dino_model(model: nn.Module,
                     mesh=None,
                     mixed_precision: Optional[dict] = None,
                     reshard_after_forward: bool = False,
                     activation_checkpointing: bool = False,
                     compile_blocks: bool = False,
                     fp8_filter: Optional[str] = None) -> nn.Module:
    """Shard the student and teacher of a DINO model in place with FSDP2.

    Every transformer block is its own FSDP unit and every sub-module (``backbone``,
    ``dino_head``, ``ibot_head`` ...) of ``student`` / ``teacher`` is an FSDP root holding the
    remaining parameters. Student and teacher are wrapped identically, so their local shards
    line up one to one and the EMA update needs no communication. The model's other frozen
    module dicts (the DINOv3 Gram teacher ``gram_teacher``, the student EMA of distillation)
    are sharded the same way as the teacher: a ViT-7B Gram teacher costs each rank
    1/world of its weights, not a full replica. They take ``mixed_precision[name]`` when
    given, else the teacher's entries.

    A model that lists its own units (an ``fsdp_units()`` method, e.g. :class:`dino_mm.DINOTxt`)
    is sharded by :func:`shard_model_units` instead, with the same arguments.

    Args:
        model (nn.Module): A model with ``student`` and ``teacher`` ``nn.ModuleDict``s, or
            with an ``fsdp_units()`` method.
        mesh (DeviceMesh, optional): 1-D mesh; the default world on the current device type.
        mixed_precision (dict, optional): ``{'student'|'teacher'|frozen component name:
            {sub_module: {param_dtype, reduce_dtype, output_dtype}}}``; missing entries
            compute in fp32. Defaults to None.
        reshard_after_forward (bool): False keeps gathered parameters until the backward
            pass (official ``SHARD_GRAD_OP``); True frees them after forward (``FULL_SHARD``).
        activation_checkpointing (bool): Recompute student blocks in the backward pass.
        compile_blocks (bool): ``torch.compile`` every backbone block before sharding it
            (:func:`compile_backbone_blocks`; official ``train.compile``), in the student,
            the teacher and the frozen components. Defaults to False.
        fp8_filter (str, optional): Official ``fp8_enabled`` + ``fp8_filter``: the linear
            layers of every backbone whose names match this regular expression (the
            recipes: ``'blocks'``) compute with fp8 products
            (:func:`dino_mm.models.layers.convert_linears_to_fp8`). Defaults to None (off).

    Returns:
        nn.Module: ``model`` itself (FSDP2 converts the modules in place).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    if has_fsdp_units(model):
        if compile_blocks or fp8_filter:
            raise ValueError(f'DINOFSDPStrategy: compile_blocks / fp8_filter are for DINO '
                             f'algorithms; {type(model).__name__} (a model with fsdp_units()) '
                             'does not support them. Set compile_blocks=False and '
                             'fp8_filter=None.')
        return shard_model_units(model, mesh, mixed_precision, reshard_after_forward,
                                 activation_checkpointing)
    if not (isinstance(getattr(model, 'student', None), nn.ModuleDict)
            and isinstance(getattr(model, 'teacher', None), nn.ModuleDict)):
        raise TypeError(f'DINOFSDPStrategy shards DINO algorithms with `student` and `teacher` '
                        f'ModuleDicts, or models with an `fsdp_units()` method; '
                        f'{type(model).__name__} has neither. Use mmengine FSDPStrategy or '
                        'DDPStrategy for other models.')
    if set(model.student.keys()) != set(model.teacher.keys()):
        raise ValueError('DINOFSDPStrategy: student and teacher must have the same sub-modules '
                         f'(got {sorted(model.student)} vs {sorted(model.teacher)}).')
    mixed_precision = mixed_precision or {}
    frozen = frozen_components(model)
    unknown = set(mixed_precision) - {'student', 'teacher'} - set(frozen)
    if unknown:
        raise KeyError(f'DINOFSDPStrategy: mixed_precision keys must be student / teacher'
                       f'{"".join(" / " + n for n in frozen)}, got {sorted(unknown)}.')
    for side in ['student', 'teacher'] + frozen:
        side_mp = mixed_precision.get(side) or {}
        if side in frozen and side not in mixed_precision:
            side_mp = mixed_precision.get('teacher') or {}
        for name, sub in getattr(model, side).items():
            policy = _mp_policy(side_mp.get(name), f'{side}.{name}')
            if activation_checkpointing and side == 'student' and hasattr(
                    sub, 'set_grad_checkpointing'):
                sub.set_grad_checkpointing(True)
            # The teacher (and every frozen component) never runs backward: keeping its
            # gathered weights (SHARD_GRAD_OP) would only hold memory until the next forward.
            reshard = reshard_after_forward or side != 'student'
            if fp8_filter and name == 'backbone':
                from dino_mm.models.layers import convert_linears_to_fp8
                convert_linears_to_fp8(sub, fp8_filter)
            if compile_blocks:
                compile_backbone_blocks(sub)
            for block in _blocks(sub):
                fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
            fully_shard(sub, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
            for method in _FORWARD_METHODS:
                if callable(getattr(sub, method, None)):
                    register_fsdp_forward_method(sub, method)
    check_identical_sharding(model)
    return model


def compile_backbone_blocks(module: nn.Module) -> List[str]:
    """``torch.compile`` the repeated units of a backbone in place, as the official DINOv3
    trainer does with ``train.compile`` (before sharding): every transformer block of a ViT,
    every stage and downsampling layer of a ConvNeXt.

    ``nn.Module.compile`` keeps the module (and so every parameter name, checkpoint key and
    layer-decay rule) where it is; only its call goes through the compiled graph. Heads are
    not compiled (the official code does not either). Returns the compiled module names.
    """
    names = {id(m): n for n, m in module.named_modules()}
    units = _blocks(module)
    if not units:  # ConvNeXt: stages and downsampling layers
        units = [unit for attr in ('stages', 'downsample_layers')
                 if isinstance(getattr(module, attr, None), nn.ModuleList)
                 for unit in getattr(module, attr)]
    for unit in units:
        unit.compile()
    return [names[id(u)] for u in units]


def frozen_components(model: nn.Module) -> List[str]:
    """Names of the model's children besides ``student`` / ``teacher`` that are module
    dicts with parameters, none of them trainable (``gram_teacher``, a student EMA ...)."""
    names = []
    for name, child in model.named_children():
        if name in ('student', 'teacher') or not isinstance(child, nn.ModuleDict):
            continue
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            names.append(name)
    return names


def reshard_fsdp(*modules: nn.Module) -> None:
    """Put every FSDP2 unit inside ``modules`` back to its local shards.

    FSDP2 roots keep their weights gathered after a forward without backward (a teacher's);
    code that reads or writes the stored shards (the EMA, a Gram-teacher refresh) first
    calls this. Plain modules are left as they are.
    """
    for top in modules:
        for module in top.modules():
            if callable(getattr(module, 'reshard', None)) and hasattr(module, 'unshard'):
                module.reshard()


def has_fsdp_units(model: nn.Module) -> bool:
    """Whether ``model`` lists its own FSDP units (an ``fsdp_units()`` method)."""
    return callable(getattr(model, 'fsdp_units', None))


def _covers(prefix: str, name: str) -> bool:
    """Whether the dotted module path ``prefix`` is ``name`` or one of its parents."""
    return prefix == '' or name == prefix or name.startswith(prefix + '.')


def _unit_policy_key(mixed_precision: dict, name: str) -> Optional[str]:
    """The longest key of ``mixed_precision`` covering unit ``name`` (None: no entry)."""
    keys = [key for key in mixed_precision if _covers(key, name)]
    return max(keys, key=len) if keys else None


def _check_units(model: nn.Module, units: List[Tuple[str, nn.Module]]) -> None:
    names = {id(m): n for n, m in model.named_modules()}
    seen = set()
    for i, (name, module) in enumerate(units):
        if names.get(id(module)) != name:
            raise ValueError(f'{type(model).__name__}.fsdp_units(): "{name}" is not the name of '
                             'that module in model.named_modules().')
        if name in seen:
            raise ValueError(f'{type(model).__name__}.fsdp_units(): "{name}" is listed twice.')
        seen.add(name)
        # FSDP2 assigns a parameter to the first unit wrapped around it: an outer unit
        # wrapped first would take the inner unit's parameters.
        inner = next((n for n, _ in units[i + 1:] if n != name and _covers(name, n)), None)
        if inner is not None:
            raise ValueError(f'{type(model).__name__}.fsdp_units(): "{inner}" is inside '
                             f'"{name}" but listed after it; list inner units first.')


class _ReplicatedGradAverager:
    """DDP-style gradient averaging of trainable parameters that are in no FSDP unit.

    FSDP2 only reduces the gradients of the parameters it manages; one outside every unit
    (``logit_scale`` of dino.txt) would otherwise step on its rank-local gradient and the
    replicas would drift apart. The reduction runs once per backward pass, at its end
    (before the clipping and the optimizer step), in a fixed parameter order on every rank.
    Like DDP without ``find_unused_parameters``, each of these parameters must take part in
    every backward pass on every rank.
    """

    def __init__(self, params: List[nn.Parameter], group=None) -> None:
        self.params, self.group = params, group
        self.world = dist.get_world_size(group)
        self.queued = False
        for p in params:
            p.register_post_accumulate_grad_hook(self._on_grad)

    def _on_grad(self, param: nn.Parameter) -> None:
        if not self.queued:
            self.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._reduce)

    @torch.no_grad()
    def _reduce(self) -> None:
        self.queued = False
        for p in self.params:
            if p.grad is None:  # keep the same collectives on every rank
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, group=self.group)
            p.grad.div_(self.world)


def shard_model_units(model: nn.Module,
                      mesh=None,
                      mixed_precision: Optional[dict] = None,
                      reshard_after_forward: bool = False,
                      activation_checkpointing: bool = False) -> nn.Module:
    """Shard, in place, the FSDP units a model lists in its ``fsdp_units()`` method.

    ``model.fsdp_units()`` returns ``[(name, module), ...]``, the names those of
    ``model.named_modules()``, inner units first (each transformer block, then the root of
    each tower). Each unit is ``fully_shard``-ed with the policy of the longest
    ``mixed_precision`` key that is its name or a parent of it. What no unit holds stays
    an ordinary replicated parameter, identical on every rank:

    * frozen parameters (``requires_grad=False``, e.g. a frozen backbone) are never sharded,
      even inside a unit (FSDP2 ``ignored_params``): they have no gradient to reduce, and
      they compute in their own dtype;
    * trainable parameters outside every unit (e.g. ``logit_scale``) are broadcast from rank
      0 and their gradients averaged over ranks at the end of each backward pass. Keeping
      them out of FSDP keeps in-place updates made in ``forward`` (a clamp) on the stored
      weight: FSDP2 would apply them to a gathered copy only.

    There is no teacher EMA here (see :func:`shard_dino_model` for DINO algorithms).

    Args:
        model (nn.Module): A model with an ``fsdp_units()`` method.
        mesh (DeviceMesh, optional): 1-D mesh; the default world on the current device type.
        mixed_precision (dict, optional): ``{unit name prefix: {param_dtype, reduce_dtype,
            output_dtype} | None}``; ``''`` covers every unit; units without an entry (or
            with None) compute in fp32. Defaults to None.
        reshard_after_forward (bool): See :func:`shard_dino_model`.
        activation_checkpointing (bool): Not supported for these models (raises).

    Returns:
        nn.Module: ``model`` itself.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    kind = type(model).__name__
    if activation_checkpointing:
        raise ValueError(f'DINOFSDPStrategy: activation_checkpointing is not supported for '
                         f'{kind} (a model with fsdp_units()); set it to False.')
    units = list(model.fsdp_units())
    _check_units(model, units)
    mixed_precision = dict(mixed_precision or {})
    unit_names = [name for name, _ in units]
    for key in mixed_precision:
        if not any(_covers(key, name) for name in unit_names):
            raise KeyError(
                f'DINOFSDPStrategy: mixed_precision key "{key}" covers no FSDP unit of {kind} '
                f'(units: {unit_names}). Its keys are unit name prefixes, e.g. '
                "{'text_model': dict(param_dtype='bf16', reduce_dtype='fp32')}, or set "
                "mixed_precision=None for fp32 (the default 'official' policy names the "
                'student / teacher of DINO algorithms).')
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    covered = set()
    for name, module in units:
        own = [n for n in trainable if _covers(name, n) and n not in covered]
        if not own:
            continue  # frozen through and through: nothing to shard
        covered.update(own)
        key = _unit_policy_key(mixed_precision, name)
        policy = _mp_policy(mixed_precision.get(key), f'{key}' if key else name)
        frozen = {p for p in module.parameters() if not p.requires_grad}
        fully_shard(module, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward, ignored_params=frozen or None)
        for method in _FORWARD_METHODS:
            if callable(getattr(module, method, None)):
                register_fsdp_forward_method(module, method)
    replicated = [model.get_parameter(n) for n in trainable if n not in covered]
    group = mesh.get_group() if mesh is not None else None
    if replicated and dist.is_initialized() and dist.get_world_size(group) > 1:
        src = dist.get_global_rank(group, 0) if group is not None else 0
        with torch.no_grad():
            for p in replicated:  # identical start, as DDP does
                dist.broadcast(p.data, src=src, group=group)
        model._fsdp_grad_averager = _ReplicatedGradAverager(replicated, group)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, 'to_local') else t


def _param_pairs(model: nn.Module):
    """``(name, source, ema)`` parameters of the model's EMA (its ``ema_pairs()``: the
    student and the teacher in SSL), so the sharded EMA blends what the plain one does."""
    for source, ema in model.ema_pairs():
        for key in source:
            s_named = dict(source[key].named_parameters())
            for name, t in ema[key].named_parameters():
                if name not in s_named:
                    raise KeyError(f'EMA parameter {key}.{name} has no student counterpart.')
                yield f'{key}.{name}', s_named[name], t


def check_identical_sharding(model: nn.Module) -> None:
    """Raise when a teacher parameter's local shard does not match its student's."""
    for name, s, t in _param_pairs(model):
        s_pl, t_pl = getattr(s, 'placements', None), getattr(t, 'placements', None)
        if s_pl != t_pl or _local(s).shape != _local(t).shape:
            raise RuntimeError(
                f'DINOFSDPStrategy: student and teacher are sharded differently at {name} '
                f'(student {s_pl} {tuple(_local(s).shape)}, teacher {t_pl} '
                f'{tuple(_local(t).shape)}); the EMA update needs identical wrapping.')


@torch.no_grad()
def fsdp_update_teacher(model: nn.Module, momentum: float) -> None:
    """EMA update on the local shards only (official: ``_foreach`` over local flat params).

    Works for sharded (DTensor) and plain parameters alike; nothing is gathered.
    """
    reshard_fsdp(*{id(m): m for pair in model.ema_pairs() for m in pair}.values())
    s_local, t_local = [], []
    for _, s, t in _param_pairs(model):
        s_local.append(_local(s).detach())
        t_local.append(_local(t))
    torch._foreach_mul_(t_local, momentum)
    torch._foreach_add_(t_local, s_local, alpha=1 - momentum)


# --------------------------------------------------------------------------- checkpoints
# A DCP checkpoint folder holds a pickled ``.metadata`` (the index of the shards) and the
# shard files. PyTorch reads ``.metadata`` with the full unpickler and the non-tensor
# values of the shards (optimizer hyper-parameters, step counters ...) with
# ``torch.load(weights_only=False)``: a crafted folder runs code on load. Every dino_mm
# entry point (``load_sharded_checkpoint`` -- FSDP resume and ``load_from`` -- and
# ``read_sharded_state_dict`` -- tools/convert/consolidate_sharded.py) instead reads
# ``.metadata`` once, with :class:`_MetadataUnpickler`, hands that object to DCP through
# :func:`_safe_dcp_classes`, and loads the non-tensor values with ``weights_only=True``.
_DCP_MD = 'torch.distributed.checkpoint.metadata'
# Exact (module, name) pairs a DCP ``.metadata`` file refers to (torch 2.4 - 2.14); no
# prefix, no dotted name. ``torch.<dtype>`` pairs are added by ``_metadata_globals``.
_METADATA_GLOBALS = (
    (_DCP_MD, 'Metadata'), (_DCP_MD, 'MetadataIndex'), (_DCP_MD, 'StorageMeta'),
    (_DCP_MD, 'TensorStorageMetadata'), (_DCP_MD, 'BytesStorageMetadata'),
    (_DCP_MD, 'ChunkStorageMetadata'), (_DCP_MD, 'TensorProperties'),
    (_DCP_MD, '_MEM_FORMAT_ENCODING'),
    ('torch.distributed.checkpoint.filesystem', '_StorageInfo'),
    ('torch', 'Size'), ('torch.serialization', '_get_layout'),
    ('pathlib', 'PosixPath'), ('pathlib', 'WindowsPath'), ('pathlib', 'PurePosixPath'),
    ('pathlib', 'PureWindowsPath'), ('collections', 'OrderedDict'))
# The dataclasses among them: the only objects whose state the pickle may set (BUILD).
_METADATA_STATEFUL = (
    (_DCP_MD, 'Metadata'), (_DCP_MD, 'MetadataIndex'), (_DCP_MD, 'StorageMeta'),
    (_DCP_MD, 'TensorStorageMetadata'), (_DCP_MD, 'BytesStorageMetadata'),
    (_DCP_MD, 'ChunkStorageMetadata'), (_DCP_MD, 'TensorProperties'),
    ('torch.distributed.checkpoint.filesystem', '_StorageInfo'))


@functools.lru_cache(maxsize=None)
def _metadata_globals() -> Dict[Tuple[str, str], object]:
    """``{(module, name): object}`` of everything ``.metadata`` may name, resolved once."""
    import importlib
    allowed = {}
    for module, name in _METADATA_GLOBALS:
        obj = getattr(importlib.import_module(module), name, None)
        if obj is not None:  # e.g. StorageMeta is missing before torch 2.4
            allowed[(module, name)] = obj
    for name, obj in vars(torch).items():
        if isinstance(obj, torch.dtype):
            allowed[('torch', name)] = obj
    return allowed


@functools.lru_cache(maxsize=None)
def _build_types() -> tuple:
    """Classes whose *instances* a ``.metadata`` pickle may set the state of (BUILD)."""
    allowed = _metadata_globals()
    return tuple(allowed[key] for key in _METADATA_STATEFUL if key in allowed)


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a DCP metadata file never holds."""


class _MetadataUnpickler(pickle._Unpickler):
    """Unpickler of a DCP ``.metadata`` file that can only rebuild DCP metadata.

    * ``find_class`` returns objects of an exact ``(module, name)`` allowlist, resolved
      in advance: nothing is imported or looked up from the file's names, so a dotted
      name (``metadata``, ``os.system``) or a module prefix cannot reach anything else;
    * ``BUILD`` (set an object's state) only applies to instances of the DCP metadata
      dataclasses: a file cannot set attributes of a class or function it names;
    * persistent ids are refused (the base class raises).

    It is the pure-Python unpickler (``BUILD`` cannot be intercepted in the C one).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        obj = _metadata_globals().get((module, name))
        if obj is None:
            raise _Refused(
                f'global "{module}.{name}" is not one of the DCP metadata types')
        return obj

    def _load_build(self):
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if type(inst) not in _build_types():
            raise _Refused(
                f'BUILD on a {type(inst).__name__} object (only DCP metadata instances '
                'have a state to set)')
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def _refuse(path: str, meta: str, why: str) -> CheckpointError:
    return CheckpointError(
        f'Sharded checkpoint "{path}": "{meta}" is not a DCP metadata file: {why}. It may '
        'have been crafted to run code when loaded; nothing from it was executed. Load '
        'only checkpoints written by dino_mm.DINOFSDPStrategy / '
        'torch.distributed.checkpoint.save, or re-save this one where it was made.')


def read_dcp_metadata(path: str, rank: Optional[int] = None):
    """Read ``<path>/.metadata`` (``__<rank>.metadata`` if ``rank``) with the safe unpickler.

    Returns:
        torch.distributed.checkpoint.metadata.Metadata: The checkpoint index.

    Raises:
        CheckpointError: The file is missing (an unfinished save), truncated, names
            anything but DCP metadata types, or points outside the folder.
    """
    from torch.distributed.checkpoint.metadata import Metadata
    name = _DCP_METADATA if rank is None else f'__{rank}{_DCP_METADATA}'
    meta = osp.join(path, name)
    try:
        with open(meta, 'rb') as f:
            obj = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(
            f'Sharded checkpoint "{path}" has no {name} file: it is incomplete '
            '(a save that never finished). Resume from the previous checkpoint.') from None
    except IsADirectoryError:
        raise CheckpointError(f'Sharded checkpoint "{path}": "{meta}" is a folder, not the '
                              'DCP metadata file.') from None
    except _Refused as err:
        raise _refuse(path, meta, str(err)) from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(f'Sharded checkpoint "{path}": "{meta}" is truncated or '
                              f'corrupt (UnpicklingError: {err}). Delete the folder and '
                              'resume from the previous checkpoint.') from None
    except Exception as err:  # EOFError, ValueError, ... from a damaged file
        raise CheckpointError(f'Sharded checkpoint "{path}": "{meta}" is truncated or '
                              f'corrupt ({type(err).__name__}: {err}). Delete the folder '
                              'and resume from the previous checkpoint.') from None
    if type(obj) is not Metadata:
        raise _refuse(path, meta, f'it holds a {type(obj).__name__}, not a Metadata')
    storage = obj.storage_data
    if not isinstance(storage, dict):
        raise _refuse(path, meta, f'its storage_data is a {type(storage).__name__}')
    for index, info in storage.items():
        rel = getattr(info, 'relative_path', None)
        parts = rel.replace('\\', '/').split('/') if isinstance(rel, str) else []
        if not parts or osp.isabs(rel) or '..' in parts:
            raise _refuse(path, meta, f'the shard of "{getattr(index, "fqn", index)}" is '
                          f'stored at {rel!r}, outside the checkpoint folder')
    return obj


@functools.lru_cache(maxsize=None)
def _safe_dcp_classes():
    """The restricted DCP reader and load planners every sharded load uses (built once)."""
    import io
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import (DefaultLoadPlanner,
                                                              _EmptyStateDictLoadPlanner)
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        """``FileSystemReader`` that returns the metadata read by ``read_dcp_metadata``."""

        def __init__(self, path: str) -> None:
            super().__init__(path)
            self._checked = {None: read_dcp_metadata(str(self.path))}
            self._checked_path = str(self.path)

        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get('rank')
            if str(self.path) != self._checked_path:  # reset() to another checkpoint
                self._checked, self._checked_path = {}, str(self.path)
            if rank not in self._checked:
                self._checked[rank] = read_dcp_metadata(str(self.path), rank)
            metadata = self._checked[rank]
            if getattr(metadata, 'storage_meta', None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafeBytesMixin:
        """Non-tensor values are read with ``torch.load(weights_only=True)``."""

        checkpoint_path = ''
        error: Optional[CheckpointError] = None

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = safe_load_bytes(value)
            except Exception as err:
                info = self.metadata.storage_data.get(read_item.storage_index)
                where = osp.join(self.checkpoint_path, getattr(info, 'relative_path', '?'))
                first = str(err).strip().splitlines()
                detail = next((line.strip() for line in first if 'GLOBAL' in line),
                              first[0] if first else type(err).__name__)
                self.error = CheckpointError(
                    f'Sharded checkpoint "{self.checkpoint_path}": the value of "{fqn}" '
                    f'(in "{where}") cannot be read with the safe loader (torch.load '
                    f'weights_only=True): {detail}. DCP checkpoints written by dino_mm '
                    'only hold numbers, strings and lists there; this one is corrupt or '
                    'was crafted to run code. Nothing from it was executed.')
                raise self.error from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    class SafeLoadPlanner(SafeBytesMixin, DefaultLoadPlanner):
        pass

    class SafeEmptyStateDictLoadPlanner(SafeBytesMixin, _EmptyStateDictLoadPlanner):
        pass

    return SafeFileSystemReader, SafeLoadPlanner, SafeEmptyStateDictLoadPlanner


def _run_dcp_load(path: str, planner, load: Callable) -> None:
    """Run a DCP load; surface the planner's own error instead of DCP's wrapper."""
    planner.checkpoint_path = path
    try:
        load()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # DCP wraps rank failures in CheckpointException
        if planner.error is not None:
            raise planner.error from err
        raise


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded_checkpoint(path: str, state: Dict[str, dict], meta: dict) -> None:
    """Write a DCP checkpoint atomically: ``path.tmp`` first, renamed when complete.

    Every rank writes only its own shards. ``meta`` (plain Python, from rank 0) goes to
    ``meta.pth`` in the safe format. A job killed during the save leaves at most a stale
    ``*.tmp`` folder; the previous checkpoint and ``last_checkpoint`` stay valid.
    """
    import torch.distributed.checkpoint as dcp
    path = osp.abspath(path)
    tmp = path + '.tmp'
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    dcp.save(state, checkpoint_id=tmp)
    if _rank() == 0:
        atomic_torch_save(meta, osp.join(tmp, META_FILE))
        old = path + '.old'
        if osp.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def load_sharded_checkpoint(path: str, state: Dict[str, dict]) -> dict:
    """Load ``state`` (sharded targets, filled in place) from ``path``; return its meta."""
    import torch.distributed.checkpoint as dcp
    if not osp.isdir(path):
        raise FileNotFoundError(f'Sharded checkpoint "{path}" is not a directory. '
                                'DINOFSDPStrategy checkpoints are folders (iter_N.pth/).')
    reader_cls, planner_cls, _ = _safe_dcp_classes()
    reader = reader_cls(path)  # reads and checks .metadata, once
    meta = safe_torch_load(osp.join(path, META_FILE))
    planner = planner_cls()
    _run_dcp_load(path, planner,
                  lambda: dcp.load(state, storage_reader=reader, planner=planner))
    return meta


def read_sharded_state_dict(path: str, prefix: str = 'model.') -> Dict[str, torch.Tensor]:
    """Read the full tensors of a sharded checkpoint in one process (no process group).

    Args:
        path (str): Checkpoint folder.
        prefix (str): Only keys under this prefix (stripped). Defaults to ``'model.'``.
    """
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    reader_cls, _, planner_cls = _safe_dcp_classes()
    reader = reader_cls(path)  # reads and checks .metadata, once
    planner = planner_cls()
    state: dict = {}
    _run_dcp_load(path, planner, lambda: _load_state_dict(
        state, storage_reader=reader, planner=planner, no_dist=True))
    out: Dict[str, torch.Tensor] = {}

    def walk(obj, key):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f'{key}.{k}' if key else str(k))
        elif isinstance(obj, torch.Tensor) and key.startswith(prefix):
            out[key[len(prefix):]] = obj
    walk(state, '')
    return out


# ----------------------------------------------------------------------------- strategy
@STRATEGIES.register_module()
class DINOFSDPStrategy(DDPStrategy):
    """FSDP2 strategy for :class:`mmengine.runner.FlexibleRunner` and DINO algorithms.

    Usage (see ``configs/_base_/schedules/dinov2_pretrain_fsdp.py``)::

        runner_type = 'FlexibleRunner'
        strategy = dict(type='dino_mm.DINOFSDPStrategy', mixed_precision=...,
                        activation_checkpointing=False)

    The teacher EMA (``model.update_teacher``) is redirected to :func:`fsdp_update_teacher`,
    which updates the local shards in place. Checkpoints are DCP folders: every rank writes
    its own shards (nothing is gathered) and they resume on any world size.

    A model with an ``fsdp_units()`` method (:class:`dino_mm.DINOTxt`) is sharded by
    :func:`shard_model_units` instead: its listed units are sharded, frozen and unlisted
    parameters stay replicated, and there is no teacher EMA. Its replicated parameters are
    written to the DCP checkpoints like the sharded ones (once, by one rank).

    Args:
        mixed_precision (dict | str, optional): Per sub-module FSDP2 precision (see
            :func:`shard_dino_model`; keyed by unit name prefix for a model with
            ``fsdp_units()``, see :func:`shard_model_units`). ``'bf16'`` (default) is
            :data:`DEFAULT_MIXED_PRECISION` (bf16 compute, fp32 head-gradient reductions of
            the DINO student); ``'fp16'`` is the official DINOv2 table
            :data:`FP16_MIXED_PRECISION`, which needs an optim wrapper with loss scaling
            (``dino_mm.FP16OptimWrapper``); None computes in fp32.
        reshard_after_forward (bool): See :func:`shard_dino_model`. Defaults to False
            (official ``SHARD_GRAD_OP``).
        activation_checkpointing (bool): Recompute student blocks during backward.
        compile_blocks (bool): ``torch.compile`` every backbone block (ViT) or stage
            (ConvNeXt) before sharding, as the official DINOv3 ``train.compile``; the first
            iterations pay the compilation. Defaults to False.
        fp8_filter (str, optional): fp8 products in the backbone linear layers matching
            this regular expression (official ``fp8_enabled: true, fp8_filter: blocks``; needs
            fp8 tensor cores to be fast). Defaults to None.
        dist_timeout (int): Seconds a collective waits for a missing rank before the job
            fails (a dead rank otherwise hangs its peers). Defaults to 1800.
        **kwargs: :class:`mmengine._strategy.DDPStrategy` arguments (``work_dir``, ...).
    """

    def __init__(self,
                 *,
                 mixed_precision: Union[dict, str, None] = 'bf16',
                 reshard_after_forward: bool = False,
                 activation_checkpointing: bool = False,
                 compile_blocks: bool = False,
                 fp8_filter: Optional[str] = None,
                 dist_timeout: int = 1800,
                 **kwargs) -> None:
        kwargs.pop('model_wrapper', None)
        super().__init__(**kwargs)
        if isinstance(mixed_precision, str):
            if mixed_precision not in MIXED_PRECISION_PRESETS:
                raise ValueError(
                    f'DINOFSDPStrategy: mixed_precision must be a dict, None (fp32) or one of '
                    f'{sorted(MIXED_PRECISION_PRESETS)}, got {mixed_precision!r}.')
            mixed_precision = copy.deepcopy(MIXED_PRECISION_PRESETS[mixed_precision])
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = reshard_after_forward
        self.activation_checkpointing = activation_checkpointing
        self.compile_blocks = compile_blocks
        self.fp8_filter = fp8_filter
        self.dist_timeout = dist_timeout
        self.mesh = None

    def _setup_distributed(self, launcher: str = 'pytorch', backend: str = 'nccl',
                           **kwargs) -> None:
        if dist.is_initialized():
            return
        timeout = datetime.timedelta(seconds=kwargs.pop('timeout', self.dist_timeout))
        if torch.cuda.is_available():
            init_dist(launcher, backend, timeout=timeout, **kwargs)
            return
        # MMEngine's init_dist calls torch.cuda.set_device unconditionally.
        if launcher == 'slurm':
            from .runner_utils import _slurm_env_to_torch_env
            _slurm_env_to_torch_env()
        dist.init_process_group(backend='gloo', timeout=timeout)

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        if is_model_wrapper(model):
            raise TypeError('DINOFSDPStrategy needs the bare model; remove model_wrapper_cfg.')
        device = get_device()
        model = model.to(device)
        for module in model.modules():
            if isinstance(module, BaseDataPreprocessor):
                module.to(device)
        if not dist.is_initialized():
            raise RuntimeError('DINOFSDPStrategy needs a process group: launch with '
                               'tools/dist_train.sh / slurm_train.sh (--launcher pytorch|slurm)'
                               ', even for a single process.')
        self.mesh = init_device_mesh(device.split(':')[0], (dist.get_world_size(),))
        shard_dino_model(model, self.mesh, self.mixed_precision, self.reshard_after_forward,
                         self.activation_checkpointing, self.compile_blocks, self.fp8_filter)
        if not has_fsdp_units(model):
            # The hooks call model.update_teacher(m); make it the shard-local update.
            model.update_teacher = lambda momentum: fsdp_update_teacher(model, momentum)
        return model

    def build_optim_wrapper(self, optim_wrapper, model=None):
        """Build the optim wrapper; refuse fp16 parameters without loss scaling."""
        wrapper = super().build_optim_wrapper(optim_wrapper, model)
        fp16 = sorted(path for path, dtype in _policy_dtypes(self.mixed_precision)
                      if dtype is torch.float16)
        if fp16 and getattr(wrapper, 'loss_scaler', None) is None:
            raise ValueError(
                f'DINOFSDPStrategy: mixed_precision computes in fp16 ({", ".join(fp16[:3])}'
                f'{" ..." if len(fp16) > 3 else ""}) but optim_wrapper '
                f'{type(wrapper).__name__} has no loss scaler: fp16 gradients underflow '
                "without one. Set optim_wrapper.type='dino_mm.FP16OptimWrapper' (sharded "
                "gradient scaler, the official DINOv2 setup) or mixed_precision='bf16'.")
        return wrapper

    # ------------------------------------------------------------------ state
    def _optimizer(self):
        wrapper = self.optim_wrapper
        if isinstance(wrapper, OptimWrapperDict):
            raise TypeError('DINOFSDPStrategy supports a single optimizer (OptimWrapper).')
        return wrapper.optimizer

    def _dcp_state(self, with_optim: bool) -> dict:
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                             get_optimizer_state_dict)
        state = {'model': get_model_state_dict(self.model)}
        if with_optim and hasattr(self, 'optim_wrapper'):
            state['optim'] = get_optimizer_state_dict(self.model, self._optimizer())
        return state

    def model_state_dict(self) -> dict:
        """Sharded (DTensor) model state dict with the original parameter names."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(self.model)

    def save_checkpoint(self, filename: str, *, save_optimizer: bool = True,
                        save_param_scheduler: bool = True, extra_ckpt: Optional[dict] = None,
                        callback: Optional[Callable] = None) -> None:
        """Write ``filename`` as a DCP folder (shards + ``meta.pth``), atomically."""
        meta = dict(extra_ckpt or {})
        meta.setdefault('meta', {})
        meta['meta'].update(seed=self.seed, time=time.strftime('%Y%m%d_%H%M%S'),
                            mmengine=mmengine.__version__ + get_git_hash(),
                            world_size=self.world_size, format='dino_mm.dcp')
        if save_param_scheduler and hasattr(self, 'param_schedulers'):
            meta['param_schedulers'] = self.scheduler_state_dict()
        if save_optimizer and isinstance(getattr(self, 'optim_wrapper', None), AmpOptimWrapper):
            meta['loss_scaler'] = self.optim_wrapper.loss_scaler.state_dict()
        if callback is not None:
            callback(meta)  # hooks see the meta part; tensors never go through pickling
        meta.pop('state_dict', None)
        save_sharded_checkpoint(filename, self._dcp_state(save_optimizer), meta)

    def load_checkpoint(self, filename: str, *, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')],
                        callback: Optional[Callable] = None) -> dict:
        """Load model weights from a sharded folder or a plain ``.pth`` (``load_from``)."""
        if not is_sharded_checkpoint(filename):
            return super().load_checkpoint(filename, map_location=map_location,
                                           strict=strict, revise_keys=revise_keys,
                                           callback=callback)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict)
        state = self._dcp_state(with_optim=False)
        meta = load_sharded_checkpoint(filename, state)
        set_model_state_dict(self.model, state['model'], options=StateDictOptions(strict=strict))
        if callback is not None:
            callback(meta)
        return meta

    def load_model_state_dict(self, state_dict: dict, *, strict: bool = False,
                              revise_keys: list = [(r'^module.', '')]) -> None:
        """Load a full (plain ``.pth``) state dict into the sharded model."""
        import re
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict)
        for pattern, repl in revise_keys:
            state_dict = {re.sub(pattern, repl, k): v for k, v in state_dict.items()}
        set_model_state_dict(self.model, state_dict,
                             options=StateDictOptions(full_state_dict=True, strict=strict))

    def resume(self, filename: str, *, resume_optimizer: bool = True,
               resume_param_scheduler: bool = True, map_location='default',
               callback: Optional[Callable] = None) -> dict:
        """Resume model, optimizer, schedulers and counters from a sharded folder."""
        from torch.distributed.checkpoint.state_dict import (set_model_state_dict,
                                                             set_optimizer_state_dict)
        if not is_sharded_checkpoint(filename):
            raise CheckpointError(
                f'"{filename}" is not a sharded checkpoint folder (with {_DCP_METADATA}); '
                'DINOFSDPStrategy resumes only its own checkpoints. To start from a plain '
                '.pth use load_from (weights only).')
        self.logger.info(f'Resume sharded checkpoint from {filename}')
        state = self._dcp_state(with_optim=resume_optimizer)
        meta = load_sharded_checkpoint(filename, state)
        set_model_state_dict(self.model, state['model'])
        if resume_optimizer:
            set_optimizer_state_dict(self.model, self._optimizer(), state['optim'])
            if 'loss_scaler' in meta and isinstance(self.optim_wrapper, AmpOptimWrapper):
                self.optim_wrapper.loss_scaler.load_state_dict(meta['loss_scaler'])
        if callback is not None:
            callback(meta)
        if resume_param_scheduler and hasattr(self, 'param_schedulers'):
            self.load_scheduler_state_dict(meta.pop('param_schedulers'))
        seed = meta['meta'].get('seed')
        if seed is not None and seed != self._randomness.get('seed'):
            self._randomness.update(seed=seed)
            self._set_randomness(**self._randomness)
        return meta
