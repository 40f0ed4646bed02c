"""Sharded, resumable, multi-process feature extraction (used by
``tools/extract_features.py``).

Layout of an output folder::

    index.json                  images, shard plan and settings (written first)
    shard_00000.cls.npy         (n, D)          class tokens     } format 'npy'
    shard_00000.patch.npy       (n, rows*cols, D) patch tokens   }
    shard_00000.safetensors     tensors 'cls' and 'patch'          format 'safetensors'

A shard is finished when all its files exist. Each file is written under a temporary
name and moved into place with ``os.replace`` (atomic on POSIX), so a run killed
mid-write never leaves a file that looks finished; a rerun skips finished shards.
Ranks take shards round-robin (shard i goes to rank i % world_size).
"""
import json
import os
import os.path as osp
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from dino_mm.engine.checkpoint import atomic_write
from dino_mm.utils.precision import precision_autocast

INDEX_FILE = 'index.json'
KINDS = ('cls', 'patch')


def shard_files(index: int, fmt: str, features: Sequence[str]) -> List[str]:
    """File names of shard ``index``."""
    if fmt == 'npy':
        return [f'shard_{index:05d}.{kind}.npy' for kind in features]
    if fmt == 'safetensors':
        return [f'shard_{index:05d}.safetensors']
    raise ValueError(f"format must be 'npy' or 'safetensors', got {fmt!r}.")


def plan_shards(num_images: int, shard_size: int) -> List[Dict[str, int]]:
    """Contiguous shards of ``shard_size`` images: [{'index', 'start', 'count'}]."""
    if shard_size < 1:
        raise ValueError(f'shard_size must be >= 1, got {shard_size}.')
    return [dict(index=i, start=s, count=min(shard_size, num_images - s))
            for i, s in enumerate(range(0, num_images, shard_size))]


def shard_done(out_dir: str, index: int, fmt: str, features: Sequence[str]) -> bool:
    return all(osp.isfile(osp.join(out_dir, f)) for f in shard_files(index, fmt, features))


def write_index(out_dir: str, images: Sequence[str], settings: Dict[str, Any]) -> Dict:
    """Write (or check on resume) ``index.json``; returns its content.

    Raises:
        ValueError: An existing index was made for other images or settings, so its
            shards cannot be reused.
    """
    fmt, features = settings['format'], settings['features']
    shards = plan_shards(len(images), settings['shard_size'])
    for shard in shards:
        shard['files'] = shard_files(shard['index'], fmt, features)
    content = dict(images=list(images), settings=settings, shards=shards)
    path = osp.join(out_dir, INDEX_FILE)
    if osp.isfile(path):
        with open(path) as f:
            old = json.load(f)
        old_settings = dict(old.get('settings', {}))
        if 'precision' in settings:  # folders written before the setting existed: fp32
            old_settings.setdefault('precision', 'fp32')
        if old.get('images') != content['images'] or old_settings != settings:
            changed = [k for k in settings if old_settings.get(k) != settings[k]]
            what = 'the image list' if old.get('images') != content['images'] else \
                f'settings {changed}'
            raise ValueError(f'{path} was written for a different run ({what} differ); '
                             f'use another --out folder or delete it to start over.')
        return old
    os.makedirs(out_dir, exist_ok=True)

    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(content, f, indent=1)

    atomic_write(path, dump)
    return content


def save_shard(out_dir: str, index: int, fmt: str, arrays: Dict[str, np.ndarray]) -> None:
    """Write one shard atomically (each file via a temporary name)."""
    names = shard_files(index, fmt, list(arrays))
    if fmt == 'npy':
        for name, kind in zip(names, arrays):
            def dump(tmp: str, arr: np.ndarray = arrays[kind]) -> None:
                with open(tmp, 'wb') as f:
                    np.save(f, arr)
            atomic_write(osp.join(out_dir, name), dump)
    else:
        from safetensors.numpy import save_file

        def dump(tmp: str) -> None:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp)
        atomic_write(osp.join(out_dir, names[0]), dump)


def load_shard(out_dir: str, index: int, fmt: str,
               features: Sequence[str] = KINDS) -> Dict[str, np.ndarray]:
    """Read a finished shard back as ``{'cls': ..., 'patch': ...}``."""
    names = shard_files(index, fmt, features)
    if fmt == 'npy':
        return {k: np.load(osp.join(out_dir, n)) for k, n in zip(features, names)}
    from safetensors.numpy import load_file
    return load_file(osp.join(out_dir, names[0]))


def extract_shards(images: Sequence[str], out_dir: str, model_cfg: Dict[str, Any],
                   settings: Dict[str, Any], rank: int = 0, world_size: int = 1,
                   progress: bool = True) -> List[int]:
    """Extract this rank's unfinished shards; returns the shard indices it wrote.

    Args:
        images (Sequence[str]): All image paths (same order on every rank).
        out_dir (str): Output folder (``index.json`` must already be written).
        model_cfg (dict): Keyword arguments of :func:`build_feature_extractor`, and
            ``precision`` of the backbone forward (``'auto'``, ``'fp32'``, ``'bf16'``,
            ``'fp16'``; see :mod:`dino_mm.utils.precision`; default ``'auto'``).
        settings (dict): ``size``, ``format``, ``features``, ``shard_size``,
            ``batch_size`` and ``dtype``.
        rank (int): This process's rank. Defaults to 0.
        world_size (int): Number of processes. Defaults to 1.
        progress (bool): Show a progress bar on rank 0. Defaults to True.
    """
    from tqdm import tqdm

    from .extractors import BackboneFeatures, PixelPatchFeatures, build_backbone
    from .image_io import load_image, to_tensor
    fmt, features = settings['format'], list(settings['features'])
    todo = [s for s in plan_shards(len(images), settings['shard_size'])
            if s['index'] % world_size == rank
            and not shard_done(out_dir, s['index'], fmt, features)]
    if not todo:
        return []
    cfg = dict(model_cfg)
    if cfg.pop('pixel_features', False):
        extractor = PixelPatchFeatures(cfg['patch_size'])
        model = None
    else:
        model = build_backbone(cfg['arch'], cfg.get('weights'), device=cfg.get('device', 'cpu'),
                               **cfg.get('overrides', {}))
        extractor = BackboneFeatures(model, layer=cfg.get('layer'),
                                     precision=cfg.get('precision', 'auto'))
    p = extractor.patch_size
    grid = (settings['size'] // p, settings['size'] // p)
    if grid[0] < 1:
        raise ValueError(f"size={settings['size']} is smaller than the patch size {p}.")
    dtype = np.dtype(settings['dtype'])
    bar = tqdm(total=sum(s['count'] for s in todo), desc=f'rank {rank}', unit='img',
               disable=not progress or rank != 0)
    written = []
    for shard in todo:
        cls_parts, patch_parts = [], []
        paths = images[shard['start']:shard['start'] + shard['count']]
        for b in range(0, len(paths), settings['batch_size']):
            batch = [to_tensor(load_image(path), grid, p, extractor.mean, extractor.std)
                     for path in paths[b:b + settings['batch_size']]]
            x = torch.stack(batch)
            if model is None:
                patch = extractor(x).flatten(1, 2)
                cls = patch.mean(1)  # no class token without a network: mean patch
            else:
                with torch.no_grad(), precision_autocast(extractor.precision,
                                                         extractor.device):
                    out = model.forward_features(x.to(extractor.device))
                cls, patch = out['x_norm_clstoken'], out['x_norm_patchtokens']
            cls_parts.append(cls.float().cpu().numpy().astype(dtype))
            patch_parts.append(patch.float().cpu().numpy().astype(dtype))
            bar.update(len(batch))
        arrays = {'cls': np.concatenate(cls_parts), 'patch': np.concatenate(patch_parts)}
        save_shard(out_dir, shard['index'], fmt, {k: arrays[k] for k in features})
        written.append(shard['index'])
    bar.close()
    return written


def spawned_worker(rank: int, world_size: int, port: int, images: Sequence[str],
                   out_dir: str, model_cfg: Dict[str, Any], settings: Dict[str, Any],
                   progress: bool = True) -> None:
    """Entry point of one ``torch.multiprocessing.spawn`` process (gloo on localhost).

    It lives in the package, not in the tool script, so spawned children can import it.
    """
    import torch.distributed as dist

    # A forked child must not enter the OpenMP pool its parent already started (libgomp
    # deadlocks); one thread per process, the parallelism comes from the processes.
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        extract_shards(images, out_dir, model_cfg, settings, rank, world_size, progress)
        dist.barrier()
    finally:
        dist.destroy_process_group()
