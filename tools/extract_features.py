"""Extract class-token and patch-token features of many images into shards.

Images come from a folder (searched recursively) or from a dataset config (every
sample's ``img_path``). Each image is resized to ``--size`` x ``--size`` (rounded down
to whole patches; the square resize of the DINOv3 README) and normalised with the
ImageNet statistics. Shards of ``--shard-size`` images are written as ``.npy`` or
``.safetensors`` next to an ``index.json`` listing the image paths; a rerun skips
finished shards (see dino_mm/apis/extract.py for the layout).

Examples::

    python tools/extract_features.py data/images --out work_dirs/feats \\
        --arch dinov2_vits14 --weights dinov2_vits14_pretrain.pth --num-procs 2
    torchrun --nproc-per-node 8 tools/extract_features.py data/images \\
        --out work_dirs/feats --launcher pytorch --device cuda
"""
import argparse
import multiprocessing as mp
import os
import os.path as osp
import socket
import sys
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from dino_mm.apis.cli import add_model_args, parse_overrides
from dino_mm.apis.extract import extract_shards, spawned_worker, write_index
from dino_mm.apis.image_io import list_images


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('source', nargs='?', default=None, help='folder of images')
    parser.add_argument('--dataset-config', default=None,
                        help='config file whose dataset provides the images (img_path)')
    parser.add_argument('--dataset-key', default='test_dataloader.dataset',
                        help='dotted key of the dataset dict inside --dataset-config')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--features', nargs='+', choices=['cls', 'patch'],
                        default=['cls', 'patch'])
    parser.add_argument('--format', choices=['npy', 'safetensors'], default='npy')
    parser.add_argument('--dtype', choices=['float32', 'float16'], default='float32')
    parser.add_argument('--shard-size', type=int, default=1000, help='images per shard')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help="'pytorch': one process per rank from torchrun's environment")
    parser.add_argument('--num-procs', type=int, default=1,
                        help='with --launcher none: spawn this many local processes')
    parser.add_argument('--no-progress', action='store_true')
    add_model_args(parser, default_size=224)
    return parser.parse_args(argv)


def dataset_images(config: str, key: str) -> List[str]:
    """Image paths of the dataset at ``key`` in an mmengine config."""
    from mmengine.config import Config

    from dino_mm.registry import DATASETS
    cfg = Config.fromfile(config)
    node: Any = cfg
    for part in key.split('.'):
        if part not in node:
            raise KeyError(f'{config!r} has no key {key!r} (missing {part!r}); pass the '
                           f'dataset location with --dataset-key.')
        node = node[part]
    dataset = DATASETS.build(node)
    paths = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        if 'img_path' not in info:
            raise KeyError(f'Sample {i} of the dataset in {config!r} has no "img_path" '
                           f'(keys: {sorted(info)}).')
        paths.append(info['img_path'])
    return paths


def _settings(args: argparse.Namespace) -> Dict[str, Any]:
    # The precision actually used ('auto' resolved) is recorded: shards computed in fp32
    # and in bf16 differ slightly, so a rerun must not mix them.
    from dino_mm.utils.precision import resolve_precision
    return dict(size=args.size, format=args.format, features=list(args.features),
                shard_size=args.shard_size, batch_size=args.batch_size, dtype=args.dtype,
                arch='pixels' if args.pixel_features else args.arch,
                weights=None if args.weights is None else osp.abspath(args.weights),
                overrides=parse_overrides(args.override),
                patch_size=args.patch_size if args.pixel_features else None,
                precision=None if args.pixel_features else resolve_precision(
                    args.precision, args.device))


def _model_cfg(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(pixel_features=args.pixel_features, patch_size=args.patch_size,
                arch=args.arch, weights=args.weights, device=args.device,
                precision=args.precision, overrides=parse_overrides(args.override))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    if (args.source is None) == (args.dataset_config is None):
        raise SystemExit('Give either an image folder or --dataset-config (not both).')
    images = (list_images(args.source) if args.source else
              dataset_images(args.dataset_config, args.dataset_key))
    if args.launcher == 'pytorch':
        backend = 'nccl' if str(args.device).startswith('cuda') else 'gloo'
        dist.init_process_group(backend)
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if backend == 'nccl':
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        if rank == 0:
            write_index(args.out, images, _settings(args))
        dist.barrier()
        extract_shards(images, args.out, _model_cfg(args), _settings(args), rank,
                       world_size, progress=not args.no_progress)
        dist.barrier()
        dist.destroy_process_group()
    else:
        write_index(args.out, images, _settings(args))
        if args.num_procs > 1:
            # fork starts CPU workers in a fraction of a second (no re-import of torch);
            # CUDA cannot be used in forked children, so GPU runs spawn.
            method = ('fork' if 'fork' in mp.get_all_start_methods()
                      and not str(args.device).startswith('cuda') else 'spawn')
            torch.multiprocessing.start_processes(
                spawned_worker, nprocs=args.num_procs, start_method=method,
                args=(args.num_procs, _free_port(), images, args.out, _model_cfg(args),
                      _settings(args), not args.no_progress))
        else:
            extract_shards(images, args.out, _model_cfg(args), _settings(args),
                           progress=not args.no_progress)
    print(f'features of {len(images)} images in {args.out}')
    return args.out


if __name__ == '__main__':
    main(sys.argv[1:])
