"""Distributed KoLeo (DINOv3): 2 gloo ranks = one process on the gathered batch.

The official definition (dinov3 ``KoLeoLossDistributed``): every rank searches the nearest
neighbours of its rows among the L2-normalised rows of all ranks (or of its group of
``loss_group_size`` consecutive rows), gathered with gradient, and returns the mean of
``-log(distance + eps)`` over its rows. So the mean of the rank losses is the KoLeo of the
gathered batch, and a rank's gradient is ``world_size`` times the single-process gradient
of its rows.
"""
import os.path as osp

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from mmengine.config import Config

from dino_mm.models.losses import KoLeoLoss, KoLeoLossDistributed
from dino_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
WORLD, LOCAL_B, DIM = 2, 5, 6
# (topk, loss_group_size): whole batch (rank 1's rows sit at offset 5 of the group, where
# their own column must be excluded), 3 neighbours, and one group per rank.
CASES = [(1, None), (3, None), (1, LOCAL_B)]


def ref_koleo(x: torch.Tensor, topk: int = 1, group=None) -> torch.Tensor:
    """Spec reference in float64: Euclidean distances of normalised rows, self excluded."""
    x = F.normalize(x.double(), dim=-1, eps=1e-8)
    size = group or x.shape[0]
    terms = []
    for start in range(0, x.shape[0], size):
        part = x[start:start + size]
        self_pair = torch.eye(part.shape[0], dtype=torch.bool)
        dist = torch.cdist(part, part).masked_fill(self_pair, float('inf'))
        terms.append(dist.topk(topk, dim=1, largest=False).values.flatten())
    return -torch.log(torch.cat(terms) + 1e-8).mean()


def _global_batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * LOCAL_B, DIM, generator=gen)


def _worker(rank, init_file, out_file):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}',
                                         rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        full = _global_batch()
        results = []
        for topk, group in CASES:
            x = full[rank * LOCAL_B:(rank + 1) * LOCAL_B].clone().requires_grad_()
            loss = KoLeoLossDistributed(topk=topk, loss_group_size=group)(x)
            loss.backward()
            results.append((loss.detach(), x.grad))
        # every rank's results, gathered on rank 0
        gathered = [None] * WORLD
        torch.distributed.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, out_file)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_two_ranks_equal_single_process_on_gathered_batch(tmp_path):
    out_file = str(tmp_path / 'out.pt')
    mp.spawn(_worker, args=(str(tmp_path / 'pg'), out_file), nprocs=WORLD, join=True)
    per_rank = torch.load(out_file)
    full = _global_batch()
    for case, (topk, group) in enumerate(CASES):
        losses = torch.stack([per_rank[r][case][0] for r in range(WORLD)])
        grads = torch.cat([per_rank[r][case][1] for r in range(WORLD)])
        ref_x = full.clone().requires_grad_()
        ref = ref_koleo(ref_x, topk, group)
        ref.backward()
        torch.testing.assert_close(losses.mean().double(), ref.detach(), rtol=1e-5,
                                   atol=1e-6, msg=f'loss, case {case}')
        # each rank's local gradient = WORLD x the single-process one (DDP / FSDP average
        # it back); it includes the other rank's loss through the gathered rows
        torch.testing.assert_close(grads / WORLD, ref_x.grad, rtol=1e-4, atol=1e-6,
                                   msg=f'grad, case {case}')
        if topk == 1 and group is None:  # the per-rank class on the whole batch agrees too
            one_x = full.clone().requires_grad_()
            one = KoLeoLoss()(one_x)
            one.backward()
            torch.testing.assert_close(losses.mean(), one.detach(), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(grads / WORLD, one_x.grad, rtol=1e-5, atol=1e-7)
        if group == LOCAL_B:  # one group per rank: each rank alone, nothing crosses
            for r in range(WORLD):
                alone = KoLeoLoss()(full[r * LOCAL_B:(r + 1) * LOCAL_B])
                torch.testing.assert_close(losses[r], alone, rtol=1e-6, atol=1e-6)


def test_single_process_matches_per_rank_koleo_and_reference():
    x = torch.randn(7, 16)
    torch.testing.assert_close(KoLeoLossDistributed()(x), KoLeoLoss()(x), rtol=0, atol=0)
    for topk in (1, 2, 6):
        torch.testing.assert_close(KoLeoLossDistributed(topk=topk)(x).double(),
                                   ref_koleo(x, topk), rtol=1e-5, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = KoLeoLossDistributed()(x.bfloat16())
    assert out.dtype == torch.float32
    assert isinstance(MODELS.build(dict(type='dino_mm.KoLeoLossDistributed', topk=2)),
                      KoLeoLossDistributed)


def test_bad_group_sizes_are_refused():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match='multiple of the per-rank batch 4'):
        KoLeoLossDistributed(loss_group_size=6)(x)
    with pytest.raises(ValueError, match='global batch 4 .* divisible by loss_group_size 8'):
        KoLeoLossDistributed(loss_group_size=8)(x)
    with pytest.raises(ValueError, match='topk=4 needs more than 4 rows'):
        KoLeoLossDistributed(topk=4)(x)
    with pytest.raises(ValueError, match='topk must be an int >= 1'):
        KoLeoLossDistributed(topk=0)
    with pytest.raises(ValueError, match='loss_group_size must be None'):
        KoLeoLossDistributed(loss_group_size=1)


# ------------------------------------------------------------------- model and configs
_TINY_V3 = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=8,
                img_size=32, embed_dim=32, depth=1, num_heads=2)
_HEAD = dict(type='dino_mm.DINOHead', out_dim=16, hidden_dim=32, bottleneck_dim=16)


def test_dinov3_selects_the_distributed_koleo_from_config():
    from dino_mm.models.algorithms.dinov3 import DINOv3
    model = DINOv3(backbone=_TINY_V3, dino_head=_HEAD, koleo_loss_distributed=True,
                   koleo_topk=2, koleo_distributed_loss_group_size=16)
    assert isinstance(model.koleo_loss, KoLeoLossDistributed)
    assert (model.koleo_loss.topk, model.koleo_loss.loss_group_size) == (2, 16)
    plain = DINOv3(backbone=_TINY_V3, dino_head=_HEAD)
    assert type(plain.koleo_loss) is KoLeoLoss
    with pytest.raises(ValueError, match='koleo_topk .* only apply to the distributed'):
        DINOv3(backbone=_TINY_V3, dino_head=_HEAD, koleo_topk=2)


def test_multidistillation_refuses_distributed_koleo():
    from dino_mm.models.algorithms.distillation import MultiDistillation
    teacher = dict(backbone=_TINY_V3, dino_head=_HEAD)
    student = dict(backbone=_TINY_V3, dino_head=_HEAD, koleo_loss_distributed=True)
    with pytest.raises(ValueError, match="student 's' sets koleo_loss_distributed=True"):
        MultiDistillation(teacher=teacher, students=dict(s=student))


def test_official_recipes_choose_the_koleo_variant():
    """Only the ViT-7B high-resolution stage uses the distributed KoLeo (group 16)."""
    pre = osp.join(ROOT, 'configs', 'pretrain')
    stage3 = Config.fromfile(osp.join(pre, 'dinov3_vit7b16_high_res_adapt.py')).model
    assert (stage3.koleo_loss_distributed, stage3.koleo_topk,
            stage3.koleo_distributed_loss_group_size) == (True, 1, 16)
    for name in ('dinov3_vit7b16_pretrain.py', 'dinov3_vit7b16_gram_anchor.py',
                 'dinov3_vitl16_im1k_lin834.py'):
        assert Config.fromfile(osp.join(pre, name)).model.koleo_loss_distributed is False
    # the stage-3 model, shrunk, is built with it
    cfg = dict(stage3, backbone=dict(stage3.backbone, embed_dim=32, depth=1, num_heads=2,
                                     ffn_ratio=2),
               dino_head=dict(stage3.dino_head, out_dim=16, hidden_dim=32, bottleneck_dim=16),
               ibot_head=dict(stage3.ibot_head, out_dim=16, hidden_dim=32, bottleneck_dim=16))
    model = MODELS.build(cfg)
    assert isinstance(model.koleo_loss, KoLeoLossDistributed)
    assert model.koleo_loss.loss_group_size == 16
