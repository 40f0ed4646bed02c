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
import os
import os.path as osp
import pickle
import shutil
import time
from typing import Callable, Dict, Iterable, List, Optional, Union

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
from .checkpoint import CheckpointError, atomic_torch_save, safe_torch_load

__all__ = [
    'DINOFSDPStrategy', 'shard_dino_model', 'fsdp_update_teacher', 'check_identical_sharding',
    'save_sharded_checkpoint', 'load_sharded_checkpoint', 'is_sharded_checkpoint',
    'read_sharded_state_dict', 'META_FILE'
]

META_FILE = 'meta.pth'
_DCP_METADATA = '.metadata'
_DTYPES = {
    'fp32': torch.float32, 'float32': torch.float32, 'fp16': torch.float16,
    'float16': torch.float16, 'half': torch.float16, 'bf16': torch.bfloat16,
    'bfloat16': torch.bfloat16, None: None
}
# Official DINOv2 FSDP precision (SPEC §6.8), with bf16 instead of fp16: bf16 needs no loss
# scaling, which FSDP2 + MMEngine's AmpOptimWrapper do not provide together. The heads of the
# student keep fp32 gradient reductions, as the official config does.
DEFAULT_MIXED_PRECISION = dict(
    student=dict(backbone=dict(param_dtype='bf16', reduce_dtype='bf16'),
                 dino_head=dict(param_dtype='bf16', reduce_dtype='fp32'),
                 ibot_head=dict(param_dtype='bf16', reduce_dtype='fp32')),
    teacher=dict(backbone=dict(param_dtype='bf16'), dino_head=dict(param_dtype='bf16'),
                 ibot_head=dict(param_dtype='bf16')))
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
                     activation_checkpointing: bool = False) -> nn.Module:
    """Shard the student and teacher of a DINO model in place with FSDP2.

    Every transformer block is its own FSDP unit and every sub-module (``backbone``,
    ``dino_head``, ``ibot_head``, ``gram`` teachers ...) of ``student`` / ``teacher`` is an
    FSDP root holding the remaining parameters. Student and teacher are wrapped identically,
    so their local shards line up one to one and the EMA update needs no communication.

    Args:
        model (nn.Module): A model with ``student`` and ``teacher`` ``nn.ModuleDict``s.
        mesh (DeviceMesh, optional): 1-D mesh; the default world on the current device type.
        mixed_precision (dict, optional): ``{'student'|'teacher': {sub_module: {param_dtype,
            reduce_dtype, output_dtype}}}``; missing entries compute in fp32. Defaults to None.
        reshard_after_forward (bool): False keeps gathered parameters until the backward
            pass (official ``SHARD_GRAD_OP``); True frees them after forward (``FULL_SHARD``).
        activation_checkpointing (bool): Recompute student blocks in the backward pass.

    Returns:
        nn.Module: ``model`` itself (FSDP2 converts the modules in place).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    if not (isinstance(getattr(model, 'student', None), nn.ModuleDict)
            and isinstance(getattr(model, 'teacher', None), nn.ModuleDict)):
        raise TypeError(f'DINOFSDPStrategy shards DINO algorithms with `student` and `teacher` '
                        f'ModuleDicts; {type(model).__name__} has none. Use mmengine '
                        "FSDPStrategy or DDPStrategy for other models.")
    if set(model.student.keys()) != set(model.teacher.keys()):
        raise ValueError('DINOFSDPStrategy: student and teacher must have the same sub-modules '
                         f'(got {sorted(model.student)} vs {sorted(model.teacher)}).')
    mixed_precision = mixed_precision or {}
    unknown = set(mixed_precision) - {'student', 'teacher'}
    if unknown:
        raise KeyError(f'DINOFSDPStrategy: mixed_precision keys must be student / teacher, '
                       f'got {sorted(unknown)}.')
    for side in ('student', 'teacher'):
        side_mp = mixed_precision.get(side) or {}
        for name, sub in getattr(model, side).items():
            policy = _mp_policy(side_mp.get(name), f'{side}.{name}')
            if activation_checkpointing and side == 'student' and hasattr(
                    sub, 'set_grad_checkpointing'):
                sub.set_grad_checkpointing(True)
            # The teacher never runs backward: keeping its gathered weights (SHARD_GRAD_OP)
            # would only hold memory until the next forward.
            reshard = reshard_after_forward or side == 'teacher'
            for block in _blocks(sub):
                fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
            fully_shard(sub, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
            for method in _FORWARD_METHODS:
                if callable(getattr(sub, method, None)):
                    register_fsdp_forward_method(sub, method)
    check_identical_sharding(model)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, 'to_local') else t


def _param_pairs(model: nn.Module, keys: Optional[Iterable[str]] = None):
    keys = list(keys) if keys is not None else list(model.student.keys())
    for key in keys:
        s_named = dict(model.student[key].named_parameters())
        for name, t in model.teacher[key].named_parameters():
            if name not in s_named:
                raise KeyError(f'teacher.{key}.{name} has no student counterpart.')
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
    # FSDP2 roots keep their weights gathered after a forward without backward (the
    # teacher's); put every unit back to its shards so both sides hold local shards.
    for side in (model.student, model.teacher):
        for module in side.modules():
            if callable(getattr(module, 'reshard', None)) and hasattr(module, 'unshard'):
                module.reshard()
    s_local, t_local = [], []
    for _, s, t in _param_pairs(model):
        s_local.append(_local(s).detach())
        t_local.append(_local(t))
    torch._foreach_mul_(t_local, momentum)
    torch._foreach_add_(t_local, s_local, alpha=1 - momentum)


# --------------------------------------------------------------------------- checkpoints
class _MetadataUnpickler(pickle.Unpickler):
    """Allows only the classes a DCP ``.metadata`` file is made of.

    DCP reads ``.metadata`` with the full unpickler (tensor data goes through
    ``torch.load(weights_only=True)``); checking it first keeps loading a sharded checkpoint
    as safe as loading a dino_mm ``.pth``.
    """

    _EXACT = {('torch', 'Size'), ('torch.serialization', '_get_layout'),
              ('pathlib', 'PosixPath'), ('pathlib', 'WindowsPath'), ('pathlib', 'Path'),
              ('collections', 'OrderedDict'), ('builtins', 'set'), ('builtins', 'frozenset'),
              ('builtins', 'slice')}

    def find_class(self, module: str, name: str):
        allowed = ((module, name) in self._EXACT
                   or module.startswith('torch.distributed.checkpoint.')
                   or module.startswith('torch.distributed.tensor.')
                   or (module == 'torch' and isinstance(getattr(torch, name, None),
                                                        (torch.dtype, torch.layout,
                                                         torch.memory_format))))
        if not allowed:
            raise pickle.UnpicklingError(f'global {module}.{name} is not allowed')
        return super().find_class(module, name)


def _check_metadata(path: str) -> None:
    meta = osp.join(path, _DCP_METADATA)
    try:
        with open(meta, 'rb') as f:
            _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(
            f'Sharded checkpoint "{path}" has no {_DCP_METADATA} file: it is incomplete '
            '(a save that never finished). Resume from the previous checkpoint.') from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(f'Sharded checkpoint "{path}": {meta} holds objects a DCP '
                              f'metadata file never contains ({err}); refusing to load it.'
                              ) from err
    except Exception as err:
        raise CheckpointError(f'Sharded checkpoint "{path}": {meta} is truncated or corrupt '
                              f'({type(err).__name__}: {err}).') from err


def is_sharded_checkpoint(path: str) -> bool:
    """Whether ``path`` is a directory written by :func:`save_sharded_checkpoint`."""
    return osp.isdir(path) and osp.isfile(osp.join(path, _DCP_METADATA))


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
    _check_metadata(path)
    meta = safe_torch_load(osp.join(path, META_FILE))
    dcp.load(state, checkpoint_id=path)
    return meta


def read_sharded_state_dict(path: str, prefix: str = 'model.') -> Dict[str, torch.Tensor]:
    """Read the full tensors of a sharded checkpoint in one process (no process group).

    Args:
        path (str): Checkpoint folder.
        prefix (str): Only keys under this prefix (stripped). Defaults to ``'model.'``.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    _check_metadata(path)
    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
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

    Args:
        mixed_precision (dict | str, optional): Per sub-module FSDP2 precision (see
            :func:`shard_dino_model`); ``'official'`` is :data:`DEFAULT_MIXED_PRECISION`
            (bf16 compute, fp32 head-gradient reductions); None computes in fp32.
        reshard_after_forward (bool): See :func:`shard_dino_model`. Defaults to False
            (official ``SHARD_GRAD_OP``).
        activation_checkpointing (bool): Recompute student blocks during backward.
        dist_timeout (int): Seconds a collective waits for a missing rank before the job
            fails (a dead rank otherwise hangs its peers). Defaults to 1800.
        **kwargs: :class:`mmengine._strategy.DDPStrategy` arguments (``work_dir``, ...).
    """

    def __init__(self,
                 *,
                 mixed_precision: Union[dict, str, None] = 'official',
                 reshard_after_forward: bool = False,
                 activation_checkpointing: bool = False,
                 dist_timeout: int = 1800,
                 **kwargs) -> None:
        kwargs.pop('model_wrapper', None)
        super().__init__(**kwargs)
        if mixed_precision == 'official':
            mixed_precision = copy.deepcopy(DEFAULT_MIXED_PRECISION)
        elif isinstance(mixed_precision, str):
            raise ValueError(f"DINOFSDPStrategy: mixed_precision must be a dict, None or "
                             f"'official', got {mixed_precision!r}.")
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = reshard_after_forward
        self.activation_checkpointing = activation_checkpointing
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
                         self.activation_checkpointing)
        # The hooks call model.update_teacher(m); make it the shard-local update.
        model.update_teacher = lambda momentum: fsdp_update_teacher(model, momentum)
        return model

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
