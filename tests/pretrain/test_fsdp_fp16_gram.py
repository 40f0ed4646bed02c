"""FSDP2 on 2 gloo ranks: fp16 with the sharded gradient scaler, and a sharded Gram teacher.

One ``torchrun --nproc_per_node 2`` launch of this file runs two phases:

1. ``fp16``: a tiny DINOv2 sharded with the official DINOv2 precision table (fp16
   parameters and reductions, fp32 head reductions) trains through ``train_step`` with
   :class:`dino_mm.FP16OptimWrapper`. Step 2 puts an inf in *one rank's* gradient shard
   only: both ranks must skip that step (weights unchanged everywhere, the same halved
   scale), and step 3 must train again.
2. ``gram``: a tiny DINOv3 with Gram anchoring, sharded in fp32, next to the same model
   unsharded on each rank: the Gram teacher must be sharded (each rank holds half of it),
   every loss term must equal the unsharded model's on the same batch, and a Gram-teacher
   refresh after an EMA step must give the unsharded refresh's weights.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
WORLD = 2
# fp32, same weights and batch; only the sharded all-gathers differ: measured ~1e-7.
LOSS_ATOL = 1e-5


def _batch(rank: int, n: int = 2) -> dict:
    from tests.pretrain.test_dist_pretrain import _collate, _CropsDataset
    data = _CropsDataset()
    return _collate([data[rank * n + i] for i in range(n)])


def _locals(model) -> dict:
    return {k: (v.to_local() if hasattr(v, 'to_local') else v).detach().clone()
            for k, v in model.student.named_parameters()}


def _fp16_phase(rank: int) -> dict:
    from dino_mm.engine.fsdp import FP16_MIXED_PRECISION, shard_dino_model
    from dino_mm.engine.optimizers import FP16OptimWrapper
    from tests.engine.tiny_models import tiny_dino
    model = tiny_dino()
    model.clip_grad = 3.0  # the per-module clipping runs on unscaled gradients
    shard_dino_model(model, mixed_precision=FP16_MIXED_PRECISION)
    block = model.student.backbone._flat_blocks()[0]
    seen = {}

    def record(module, args, output):
        seen.setdefault('dtype', str(output.dtype))

    block.register_forward_hook(record)
    wrapper = FP16OptimWrapper(
        optimizer=torch.optim.AdamW(model.student.parameters(), lr=1e-3),
        device_type='cpu', loss_scale=dict(init_scale=2.0**6))
    plain_backward = wrapper.backward

    def poisoned_backward(loss, **kwargs):  # an overflow in rank 1's shard only
        plain_backward(loss, **kwargs)
        if rank == 1:
            local = (g.to_local() if hasattr(g, 'to_local') else g
                     for g in (p.grad for p in model.student.parameters()) if g is not None)
            next(t for t in local if t.numel()).view(-1)[0] = float('inf')

    out = dict(scaler=type(wrapper.loss_scaler).__name__, changed=[], scale=[])
    for step in range(3):
        wrapper.backward = poisoned_backward if step == 1 else plain_backward
        before = _locals(model)
        logs = model.train_step(_batch(rank), wrapper)
        after = _locals(model)
        out['changed'].append(sum(not torch.equal(before[k], after[k]) for k in before))
        out['scale'].append(wrapper.loss_scaler.get_scale())
        out.setdefault('finite_logs', []).append(
            all(torch.isfinite(torch.as_tensor(v)).all().item() for v in logs.values()))
    out['n_params'] = len(before)
    out['block_dtype'] = seen['dtype']
    out['scaler_state'] = {k: float(v) for k, v in wrapper.state_dict()['loss_scaler'].items()
                           if isinstance(v, (int, float))}
    return out


def _gram_phase(rank: int) -> dict:
    import copy

    from torch.distributed.tensor import DTensor

    from dino_mm.engine.fsdp import fsdp_update_teacher, shard_dino_model
    from tests.models.algorithms.test_dinov3 import _perturb, build
    torch.manual_seed(0)
    ref = build()
    _perturb(ref.student)
    _perturb(ref.gram_teacher)
    model = copy.deepcopy(ref)
    shard_dino_model(model, mixed_precision=None)
    gram_params = list(model.gram_teacher.parameters())
    full = sum(p.numel() for p in gram_params)
    local = sum(p.to_local().numel() for p in gram_params if isinstance(p, DTensor))
    batch = _batch(rank)
    out = dict(gram_dtensor=all(isinstance(p, DTensor) for p in gram_params),
               gram_local_fraction=local / full)
    with torch.no_grad():
        want = ref(**ref.data_preprocessor(batch, True), mode='loss')
        got = model(**model.data_preprocessor(batch, True), mode='loss')
    out['loss_terms'] = sorted(want)
    out['loss_diff'] = {k: float((want[k] - got[k]).abs().max()) for k in want}
    before = copy.deepcopy(ref.gram_teacher.state_dict())
    ref.update_teacher(0.5)
    fsdp_update_teacher(model, 0.5)
    ref.refresh_gram_teacher()
    model.refresh_gram_teacher()
    want_sd = ref.gram_teacher.state_dict()
    got_sd = {k: (v.full_tensor() if isinstance(v, DTensor) else v)
              for k, v in model.gram_teacher.state_dict().items()}
    out['refresh_diff'] = max(float((want_sd[k] - got_sd[k]).abs().max()) for k in want_sd)
    out['refresh_moved'] = max(float((want_sd[k] - before[k]).abs().max()) for k in want_sd)
    return out


def _worker(out: str) -> None:
    import torch.distributed as dist
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.set_num_threads(1)
    result = dict(fp16=_fp16_phase(rank))
    dist.barrier()
    result['gram'] = _gram_phase(rank)
    with open(osp.join(out, f'rank{rank}.json'), 'w') as f:
        json.dump(result, f)
    dist.barrier()  # no rank closes its gloo pairs while the other still reads them
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    from tests.distributed import failure, torchrun
    out = str(tmp_path_factory.mktemp('fsdp_fp16_gram'))
    logs = osp.join(out, 'logs')
    run = torchrun(__file__, out, nproc=WORLD, log_dir=logs, timeout=400)
    assert run.returncode == 0, failure(run, logs)
    results = []
    for rank in range(WORLD):
        with open(osp.join(out, f'rank{rank}.json')) as f:
            results.append(json.load(f))
    return results


def test_fp16_sharded_scaler_skips_an_overflow_on_one_rank_everywhere_and_recovers(runs):
    for r in runs:
        fp16 = r['fp16']
        assert fp16['scaler'] == 'ShardedGradScaler'
        assert fp16['block_dtype'] == 'torch.float16'  # FSDP computes in fp16
        n = fp16['n_params']
        changed = fp16['changed']
        assert changed[0] > n // 2, changed  # step 1 trains
        assert changed[1] == 0, changed  # the overflow step is skipped on every rank
        assert changed[2] > n // 2, changed  # and training goes on
        assert fp16['scale'][:2] == [2.0**6, 2.0**5], fp16['scale']
        assert fp16['scale'][2] == 2.0**5
        assert fp16['finite_logs'] == [True, False, True]  # step 2 logs its inf grad norm
    assert runs[0]['fp16']['scale'] == runs[1]['fp16']['scale']
    assert runs[0]['fp16']['scaler_state'] == runs[1]['fp16']['scaler_state']


def test_gram_teacher_is_sharded_and_equals_the_unsharded_model(runs):
    for r in runs:
        gram = r['gram']
        assert gram['gram_dtensor']
        assert 0.4 < gram['gram_local_fraction'] < 0.6  # half of the Gram teacher per rank
        assert 'gram_loss' in gram['loss_terms']
        bad = {k: v for k, v in gram['loss_diff'].items() if not v <= LOSS_ATOL}
        assert not bad, bad
        assert gram['refresh_moved'] > 1e-3  # the refresh changed the Gram teacher
        assert gram['refresh_diff'] <= 1e-6


if __name__ == '__main__':
    _worker(sys.argv[1])
