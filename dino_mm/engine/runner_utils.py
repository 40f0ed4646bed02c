"""Helpers shared by tools/train.py and tools/test.py (config overrides, CPU launch)."""
import os
import os.path as osp
import subprocess
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict

from dino_mm.utils.slurm import setdefault_master_port


def apply_common_args(cfg: Config, config_path: str, work_dir: Optional[str],
                      launcher: str) -> Config:
    """Apply ``--work-dir`` and ``--launcher`` the way mmpretrain/mmseg tools do.

    A launched run (``launcher != 'none'``) also gets a
    :class:`~dino_mm.engine.hooks.ParentProcessWatchHook`, so that its ranks stop when
    the launcher (torchrun agent, srun step) dies instead of running on as orphans. A
    ``slurm`` run also gets ``MASTER_PORT`` derived from its job id unless it is set
    (:func:`dino_mm.utils.slurm.setdefault_master_port`).
    """
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    if launcher != 'none':
        ensure_parent_watch_hook(cfg)
    if launcher == 'slurm':
        # Before MMEngine's init_dist reads it (29500 otherwise: jobs sharing a node collide).
        setdefault_master_port()
    return cfg


def ensure_parent_watch_hook(cfg: Config) -> None:
    """Add ``dino_mm.ParentProcessWatchHook`` to ``custom_hooks`` unless it is there."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(str(h.get('type', '')).endswith('ParentProcessWatchHook') for h in hooks):
        hooks.append(dict(type='dino_mm.ParentProcessWatchHook'))
    cfg.custom_hooks = hooks


def _slurm_env_to_torch_env() -> None:
    """Derive torch.distributed env vars from SLURM ones (as mmengine does for GPUs).

    Inside an srun step the SLURM variables define this task's rank, so they overwrite
    RANK / WORLD_SIZE / LOCAL_RANK (mmengine's GPU path does the same): values inherited
    from the submitting shell (e.g. RANK=0 WORLD_SIZE=1 left by an earlier single-process
    job) would otherwise make every task rank 0 of a 1-process world, all binding the same
    port.
    """
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ.get('SLURM_NODELIST', 'localhost')
        try:
            addr = subprocess.run(['scontrol', 'show', 'hostname', node_list],
                                  capture_output=True, text=True, check=True)
            os.environ['MASTER_ADDR'] = addr.stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            os.environ['MASTER_ADDR'] = node_list.split(',')[0]
    setdefault_master_port()  # user-set MASTER_PORT, else derived from the SLURM job id


def setup_cpu_distributed(cfg: Config) -> None:
    """Start a gloo process group for multi-process runs on machines without CUDA.

    MMEngine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally and
    wraps models in DDP with ``device_ids=[LOCAL_RANK]``, both of which fail on CPU.
    Initialising the group here (MMEngine then skips its own init) and passing
    ``device_ids=None`` keeps the standard launchers working for CPU tests and demos.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return
    if cfg.launcher == 'slurm':
        _slurm_env_to_torch_env()
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout', 1800)
    import datetime
    dist.init_process_group(backend='gloo', timeout=datetime.timedelta(seconds=timeout))
    cfg.setdefault('env_cfg', ConfigDict())
    cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:  # MMEngine's own default wrapper, with its default arguments
        wrapper = ConfigDict(type='MMDistributedDataParallel', broadcast_buffers=False,
                             find_unused_parameters=cfg.get('find_unused_parameters', False))
    if 'DistributedDataParallel' in str(wrapper.get('type', '')):
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def resolve_auto_resume(cfg: Config) -> Optional[str]:
    """``--resume`` without a path: pick the checkpoint, falling back past a bad pointer.

    MMEngine resumes from whatever ``<work_dir>/last_checkpoint`` names and fails with
    ``Checkpoint file "" does not exist`` when that file is empty or names a file that is
    gone, although other checkpoints are there. Here such a pointer is passed over for the
    newest readable checkpoint with finite weights in the work dir (and the checkpoint
    hook's ``out_dir``), and the choice is logged. Sets ``cfg.load_from`` / ``cfg.resume``.

    Returns:
        str | None: The checkpoint resumed from (None: nothing to resume, a fresh start).
    """
    import logging

    from mmengine.logging import print_log

    from dino_mm.engine.checkpoint import find_resume_checkpoint
    hook = (cfg.get('default_hooks', None) or {}).get('checkpoint', None) or {}
    tmpls = [hook['filename_tmpl']] if hook.get('filename_tmpl') else ['iter_{}.pth',
                                                                        'epoch_{}.pth']
    dirs = []
    if hook.get('out_dir'):  # CheckpointHook writes to <out_dir>/<basename of work_dir>
        dirs.append(osp.join(hook['out_dir'], osp.basename(osp.normpath(cfg.work_dir))))
    path, notes = find_resume_checkpoint(cfg.work_dir, dirs, tmpls)
    cfg.resume = path is not None
    cfg.load_from = path
    if notes:
        where = (f'resuming from "{path}", the newest checkpoint with finite weights'
                 if path else 'no usable checkpoint was found, so training starts from '
                 'scratch')
        print_log(f'--resume: {"; ".join(notes)}; {where}.', logger='current',
                  level=logging.WARNING)
    return path


def apply_test_amp(cfg: Config, device_type: Optional[str] = None) -> str:
    """``tools/test.py --amp``: a mixed-precision test loop, frozen-feature backbones too.

    MMEngine's ``TestLoop(fp16=True)`` (and :class:`dino_mm.evaluation.FeatureEvalTestLoop`)
    runs ``test_step`` under MMEngine's ``autocast``, which uses fp16 on CUDA and bf16 on
    CPU; this switches it on. Models with their own ``precision`` argument
    (:class:`~dino_mm.evaluation.FrozenFeatureModel`,
    :class:`~dino_mm.evaluation.LinearProbeGrid`) turn an outer autocast off when their
    precision is fp32, so they are given the same precision explicitly.

    Args:
        cfg (Config): The test config (changed in place).
        device_type (str, optional): Defaults to MMEngine's ``get_device()``.

    Returns:
        str: ``'bf16'`` (CPU) or ``'fp16'`` (accelerators).

    Raises:
        ConfigError: The config has no ``test_cfg``, or its loop takes no ``fp16``.
    """
    import inspect

    from mmengine.device import get_device

    from dino_mm.engine.config_checks import ConfigError, resolve_type
    from dino_mm.registry import LOOPS, MODELS
    from dino_mm.utils.precision import resolve_precision
    device_type = device_type or get_device()
    precision = 'bf16' if device_type == 'cpu' else 'fp16'
    test_cfg = cfg.get('test_cfg', None)
    if not test_cfg:
        raise ConfigError("--amp turns on test_cfg.fp16, but the config has no test_cfg; "
                          "add test_cfg = dict(type='TestLoop').")
    loop_type = test_cfg.get('type', 'TestLoop')
    scope = cfg.get('default_scope', None)
    loop_cls = next(iter(resolve_type(loop_type, scope, [LOOPS])), None)
    if loop_cls is not None and \
            'fp16' not in inspect.signature(loop_cls.__init__).parameters:
        raise ConfigError(f'--amp: test_cfg.type={loop_type!r} takes no fp16 argument, so '
                          'the test loop cannot run in mixed precision; drop --amp or use '
                          "a loop derived from MMEngine's TestLoop.")
    test_cfg['fp16'] = True
    model = cfg.get('model', None) or {}
    model_cls = next(iter(resolve_type(model.get('type'), scope, [MODELS])), None)
    takes_precision = 'precision' in model or (
        model_cls is not None and 'precision' in inspect.signature(model_cls).parameters)
    if device_type in ('cpu', 'cuda'):
        resolve_precision(precision, device_type, owner='tools/test.py --amp')
        if takes_precision:
            model['precision'] = precision
    return precision


def finish_distributed(launcher: Optional[str]) -> None:
    """End a tool's distributed run cleanly: all ranks meet, then the process group closes.

    MMEngine's runner never destroys the group it created, so each rank's process exits
    with live c10d / gloo threads; a rank that exits while its peer still tears down its
    pairs can die in ``std::terminate`` ("terminate called without an active exception",
    SIGABRT) after a run that succeeded. Only for runs the tool launched (``launcher`` not
    'none'): a process group made by a caller stays the caller's.
    """
    if launcher in (None, 'none') or not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
