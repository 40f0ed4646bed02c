"""Helpers shared by tools/train.py and tools/test.py (config overrides, CPU launch)."""
import os
import os.path as osp
import subprocess
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict


def apply_common_args(cfg: Config, config_path: str, work_dir: Optional[str],
                      launcher: str) -> Config:
    """Apply ``--work-dir`` and ``--launcher`` the way mmpretrain/mmseg tools do."""
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    return cfg


def ensure_plain_checkpoint_hook(cfg: Config) -> None:
    """Make sure checkpoints are written in the safe format (see engine/checkpoint.py)."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(str(h.get('type', '')).endswith('PlainCheckpointHook') for h in hooks):
        hooks.append(dict(type='dino_mm.PlainCheckpointHook'))
    cfg.custom_hooks = hooks


def _slurm_env_to_torch_env() -> None:
    """Derive torch.distributed env vars from SLURM ones (as mmengine does for GPUs)."""
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ.get('SLURM_NODELIST', 'localhost')
        try:
            addr = subprocess.run(['scontrol', 'show', 'hostname', node_list],
                                  capture_output=True, text=True, check=True)
            os.environ['MASTER_ADDR'] = addr.stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            os.environ['MASTER_ADDR'] = node_list.split(',')[0]
    os.environ.setdefault('MASTER_PORT', '29500')


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
