"""Pretraining throughput of a dino_mm SSL config: images/s, peak memory per rank, MFU.

Builds the model, optimizer and (under ``torchrun``) the sharding strategy of a pretraining
config, feeds synthetic batches with the config's crop sizes, numbers of crops and iBOT mask
ratios, and times full training steps (forward, backward, per-module clipping, AdamW step,
teacher EMA). FLOPs of one step are counted with ``torch.utils.flop_counter``; MFU = achieved
FLOP/s / peak bf16 FLOP/s of the GPU (``--peak-tflops``, defaults known for A100/H100/H200).

Examples::

    # one process (CPU or one GPU), shrunk with --cfg-options
    python benchmarks/pretrain_throughput.py configs/pretrain/dinov2_vitl14_96xb32-500e_in22k.py \\
        --batch 4 --iters 5 --cfg-options model.backbone.depth=4
    # 8 GPUs with the FSDP strategy of the config
    torchrun --nproc_per_node 8 benchmarks/pretrain_throughput.py \\
        configs/pretrain/dinov2_vitl14_96xb32-500e_in22k_fsdp.py --iters 20

Prints one JSON line (rank 0): images_per_s (global), s_per_iter, peak_mem_gb (max over
ranks), tflops_per_gpu and mfu (GPU only).
"""
import argparse
import json
import os
import os.path as osp
import resource
import sys
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

PEAK_BF16_TFLOPS = {'A100': 312.0, 'H100': 989.0, 'H200': 989.0}


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--batch', type=int, default=None, help='images per GPU (default: config)')
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--peak-tflops', type=float, default=None)
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return p.parse_args(argv)


def synthetic_batch(cfg, batch: int, device) -> dict:
    """A collated multi-crop batch with the config's sizes (official collate layout)."""
    crop = cfg.train_dataloader.dataset.pipeline[-1]
    patch = cfg.model.backbone.get('patch_size', 14)
    g, l, n_l = crop.global_crops_size, crop.local_crops_size, crop.local_crops_number
    n_tok = (g // patch) ** 2
    masks = torch.zeros(2 * batch, n_tok, dtype=torch.bool)
    for i in range(batch):  # half of the global crops, ratios spread over [0.1, 0.5]
        k = int(n_tok * (0.1 + 0.4 * i / max(batch - 1, 1)))
        masks[i, torch.randperm(n_tok)[:k]] = True
    idx = masks.flatten().nonzero().flatten()
    counts = masks.sum(-1, keepdim=True).clamp(min=1)
    return dict(collated_global_crops=torch.randn(2 * batch, 3, g, g, device=device),
                collated_local_crops=torch.randn(n_l * batch, 3, l, l, device=device),
                collated_masks=masks.to(device), mask_indices_list=idx.to(device),
                masks_weight=(1.0 / counts).expand_as(masks)[masks].to(device),
                n_masked_patches=torch.tensor([idx.numel()], device=device),
                upperbound=int(idx.numel()))


def main(argv=None) -> None:
    import torch.distributed as dist
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    import dino_mm  # noqa: F401
    from dino_mm.registry import MODELS
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    batch = args.batch or cfg.train_dataloader.batch_size
    cuda = torch.cuda.is_available()
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if cuda else 'cpu'
    distributed = int(os.environ.get('WORLD_SIZE', 1)) > 1
    if distributed:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group('nccl' if cuda else 'gloo')
    world = dist.get_world_size() if distributed else 1

    model = MODELS.build(cfg.model)
    model.init_weights()
    model.to(device)
    strategy = cfg.get('strategy') or {}
    if 'FSDP' in str(strategy.get('type', '')):
        from dino_mm.engine.fsdp import DINOFSDPStrategy, fsdp_update_teacher, shard_dino_model
        if not distributed:
            dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
        opts = {k: v for k, v in strategy.items() if k != 'type'}
        s = DINOFSDPStrategy(**opts)
        shard_dino_model(model, None, s.mixed_precision, s.reshard_after_forward,
                         s.activation_checkpointing)
        update = lambda m: fsdp_update_teacher(model, m)  # noqa: E731
        mode = f'fsdp x{world}'
    elif distributed:
        from dino_mm.engine.model_wrappers import DINODistributedDataParallel
        model = DINODistributedDataParallel(module=model, device_ids=[device] if cuda else None,
                                            broadcast_buffers=False)
        update = model.module.update_teacher
        mode = f'ddp x{world}'
    else:
        update = model.update_teacher
        mode = 'single'
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    data = synthetic_batch(cfg, batch, device)

    def step():
        model.train_step(data, optim)
        update(0.994)

    for _ in range(args.warmup):
        step()
    flops = None
    if cuda:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    sec = (time.perf_counter() - start) / args.iters
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    peak_t = torch.tensor([peak], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(peak_t, op=dist.ReduceOp.MAX)
    result = dict(config=osp.basename(args.config), mode=mode, device=str(
        torch.cuda.get_device_name(device) if cuda else 'cpu'), images_per_gpu=batch,
        s_per_iter=round(sec, 4), images_per_s=round(batch * world / sec, 2),
        peak_mem_gb=round(float(peak_t), 3))
    if flops is not None:
        name = torch.cuda.get_device_name(device)
        peak_tflops = args.peak_tflops or next(
            (v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result['tflops_per_gpu'] = round(flops / sec / 1e12, 2)
        if peak_tflops:
            result['mfu'] = round(flops / sec / 1e12 / peak_tflops, 4)
    if not distributed or dist.get_rank() == 0:
        print(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
