"""DINOv3 meta-architecture: losses against references written from docs/reference.md.

The references below re-derive every loss term from docs/reference.md §4.1-§4.2 with plain
tensor operations (Sinkhorn-Knopp, cross-entropy means, KoLeo by pairwise distances, iBOT
token weights, Gram MSE with a bicubic teacher resize); only the backbone / head forwards
are shared with the model.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dino_mm.datasets.collate import dino_collate
from dino_mm.datasets.transforms.multi_crop import DINOMultiCrop
from dino_mm.engine.hooks import GramTeacherRefreshHook, LossWeightScheduleHook
from dino_mm.engine.schedulers import linear_warmup_cosine_decay
from dino_mm.datasets.multi_resolution import (MultiResolutionBatchSampler,
                                               MultiResolutionDataset)
from dino_mm.models.algorithms.dinov3 import DINOv3

B, N_LOCAL, GLOBAL, LOCAL, GRAM, PATCH, DIM = 3, 2, 32, 16, 48, 8, 48
HEAD = dict(out_dim=40, hidden_dim=64, bottleneck_dim=16, nlayers=3)
IBOT_HEAD = dict(out_dim=24, hidden_dim=64, bottleneck_dim=16, nlayers=3)


def backbone_cfg(**kw):
    cfg = dict(type='dino_mm.DinoVisionTransformer', arch='dinov3_vits16', patch_size=PATCH,
               embed_dim=DIM, depth=2, num_heads=4, untie_global_and_local_cls_norm=True,
               drop_path_rate=0.0,
               # LayerScale 1 (not the official 1e-5) so random-init class tokens differ per
               # image; with near-identical tokens KoLeo's log-distances are ill-conditioned.
               layerscale_init=1.0)
    cfg.update(kw)
    return cfg


def build(gram=True, **kw):
    kw.setdefault('backbone', backbone_cfg(pos_embed_rope_rescale_coords=None))
    model = DINOv3(dino_head=HEAD, ibot_head=IBOT_HEAD,
                   gram_loss=dict(remove_neg=False) if gram else None, **kw)
    model.init_weights()
    return model


def real_batch(real_images, gram_size=GRAM, n_local=N_LOCAL):
    transform = DINOMultiCrop(global_crops_size=GLOBAL, local_crops_size=LOCAL,
                              local_crops_number=n_local, gram_teacher_crops_size=gram_size,
                              gram_teacher_no_distortions=True)
    samples = [transform({'img': Image.fromarray(real_images[k])})
               for k in ('astronaut', 'chelsea', 'coffee')]
    batch = dino_collate(samples, patch_size=PATCH)
    assert batch['mask_indices_list'].numel() > 0
    return batch


def _perturb(module, scale=0.05):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale * (p.std() if p.numel() > 1 else 1))


# ------------------------------------------------------------------ references (spec)
def ref_sinkhorn(logits, temp, iters=3):
    q = torch.exp(logits.double() / temp).t()  # K x N
    k, n = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).t().float()


def ref_ce_mean(student, teacher, skip_same=False):
    """Mean over (b, s, t) of -sum_k p_t log softmax(s / 0.1), optionally s != t only."""
    terms = []
    for s_idx in range(student.shape[0]):
        logp = F.log_softmax(student[s_idx] / 0.1, dim=-1)
        for t_idx in range(teacher.shape[0]):
            if skip_same and s_idx == t_idx:
                continue
            terms.append(-(teacher[t_idx] * logp).sum(-1))
    return torch.cat(terms).mean()


def ref_koleo(x):
    x = F.normalize(x.double(), dim=-1, eps=1e-8)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float('inf'))
    return -torch.log(dist.min(dim=1).values + 1e-8).mean().float()


def ref_gram(student, teacher):
    s = F.normalize(student.double(), dim=-1)
    t = F.normalize(teacher.double(), dim=-1)
    return ((s @ s.transpose(1, 2) - t @ t.transpose(1, 2))**2).mean().float()


@pytest.mark.parametrize('ignore_diagonal', [True, False])
def test_losses_match_spec_reference(real_images, ignore_diagonal):
    model = build(global_ignore_diagonal=ignore_diagonal, local_loss_weight=0.7,
                  gram_loss_weight=1.5)
    _perturb(model.teacher)
    _perturb(model.gram_teacher)
    model.train()
    model.teacher_temp = 0.05
    batch = real_batch(real_images)
    losses = model(**batch, mode='loss')
    assert set(losses) == {'dino_local_crops_loss', 'dino_global_crops_loss', 'koleo_loss',
                           'ibot_loss', 'gram_loss'}

    g, loc = batch['collated_global_crops'], batch['collated_local_crops']
    masks, idx = batch['collated_masks'], batch['mask_indices_list']
    with torch.no_grad():
        t_out = model.teacher.backbone.forward_features(g)
        t_dino = ref_sinkhorn(model.teacher.dino_head(t_out['x_norm_clstoken']), 0.05)
        t_ibot = ref_sinkhorn(model.teacher.ibot_head(
            t_out['x_norm_patchtokens'].flatten(0, 1)[idx]), 0.05)
        t_dino = t_dino.view(2, B, -1)  # crop order, no swap
        gram_t = model.gram_teacher.backbone.forward_features(
            batch['collated_gram_teacher_crops'])['x_norm_patchtokens']
        side_t, side_s = GRAM // PATCH, GLOBAL // PATCH
        gram_t = F.interpolate(gram_t.transpose(1, 2).reshape(-1, DIM, side_t, side_t),
                               size=(side_s, side_s), mode='bicubic',
                               align_corners=False).flatten(2).transpose(1, 2)
        s_glob = model.student.backbone.forward_features(g, masks=masks)
        s_loc_pre = model.student.backbone.forward_features(loc)['x_prenorm'][:, 0]
        # Local crops use the untied local class-token norm in training
        # (docs/reference.md §1.8).
        s_loc_cls = model.student.backbone.local_cls_norm(s_loc_pre)
        s_g_head = model.student.dino_head(s_glob['x_norm_clstoken']).view(2, B, -1)
        s_l_head = model.student.dino_head(s_loc_cls).view(N_LOCAL, B, -1)
        s_ibot = model.student.ibot_head(s_glob['x_norm_patchtokens'].flatten(0, 1)[idx])

    n_glob_terms = 2 if ignore_diagonal else 4
    n_loc_terms = 2 * N_LOCAL
    total = n_glob_terms + n_loc_terms
    ref = {
        'dino_local_crops_loss': 0.7 * n_loc_terms / total * ref_ce_mean(s_l_head, t_dino),
        'dino_global_crops_loss': n_glob_terms / total * ref_ce_mean(
            s_g_head, t_dino, skip_same=ignore_diagonal),
        'koleo_loss': 0.1 * 2 * sum(ref_koleo(c) for c in s_glob['x_norm_clstoken'].chunk(2))
        / 2,
    }
    per_image = 1 / masks.sum(-1).clamp(min=1)
    weights = per_image[:, None].expand_as(masks)[masks]
    ce = -(t_ibot * F.log_softmax(s_ibot / 0.1, dim=-1)).sum(-1)
    ref['ibot_loss'] = (ce * weights).sum() / masks.shape[0]
    ref['gram_loss'] = 1.5 * ref_gram(s_glob['x_norm_patchtokens'], gram_t)
    errs = {}
    for key, value in ref.items():
        errs[key] = abs(losses[key].item() - value.item())
    print('abs errors', {k: f'{v:.1e}' for k, v in errs.items()},
          {k: f'{v.item():.4f}' for k, v in ref.items()})
    for key, value in ref.items():
        torch.testing.assert_close(losses[key].detach(), value.float(), rtol=2e-5, atol=2e-6,
                                   msg=key)
    # Everything the optimiser sees is the logged sum, and it has gradients.
    sum(losses.values()).backward()
    assert model.student.backbone.local_cls_norm.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.gram_teacher.parameters())


def test_v3_defaults_and_normalisation_constants():
    model = build(gram=False)
    # Official 8 local crops: 16/18 and 2/18 (docs/reference.md §4.1); without the diagonal
    # rule 16/20, 4/20.
    assert model._dino_scales(2, 8) == pytest.approx((16 / 18, 2 / 18))
    model.global_ignore_diagonal = False
    assert model._dino_scales(2, 8) == pytest.approx((16 / 20, 4 / 20))
    assert model.centering == 'sinkhorn_knopp'
    keys = model.state_dict().keys()
    assert 'student.dino_head.last_layer.weight' in keys  # no weight norm (v3 head)
    assert 'student.dino_head.last_layer.weight_g' not in keys
    assert 'student.backbone.storage_tokens' in keys
    assert 'student.backbone.local_cls_norm.weight' in keys
    assert not hasattr(model, 'gram_teacher')


def test_rope_augmentation_only_in_student(real_images):
    model = build(backbone=backbone_cfg(pos_embed_rope_rescale_coords=2.0))
    model.train()
    x = real_batch(real_images)['collated_global_crops'][:2]
    s = model.student.backbone
    a, b = s.forward_features(x)['x_norm_clstoken'], s.forward_features(x)['x_norm_clstoken']
    assert (a - b).abs().max() > 1e-4  # random coordinate rescale in train mode
    for frozen in (model.teacher.backbone, model.gram_teacher.backbone):
        assert not frozen.training
        torch.testing.assert_close(frozen.forward_features(x)['x_norm_clstoken'],
                                   frozen.forward_features(x)['x_norm_clstoken'])


def test_gram_teacher_sources_and_errors(tmp_path):
    model = build()
    _perturb(model.teacher)
    model.refresh_gram_teacher()
    for (k, v), v_t in zip(model.gram_teacher.backbone.state_dict().items(),
                           model.teacher.backbone.state_dict().values()):
        assert torch.equal(v, v_t), k
    # gram_ckpt: teacher.backbone.* of a previous-stage checkpoint.
    ckpt = tmp_path / 'stage1.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    fresh = build(gram_ckpt=str(ckpt))
    torch.testing.assert_close(fresh.gram_teacher.backbone.state_dict(),
                               model.teacher.backbone.state_dict())
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        build(gram_ckpt=str(tmp_path / 'missing.pth'))
    other = DINOv3(backbone=backbone_cfg(embed_dim=32), dino_head=HEAD)
    bad = tmp_path / 'other.pth'
    torch.save({'state_dict': other.state_dict()}, bad)
    with pytest.raises(ValueError, match=r'other\.pth(.|\n)*cls_token: checkpoint \(1, 1, 32\) '
                       r'vs model \(1, 1, 48\)'):
        build(gram_ckpt=str(bad))
    with pytest.raises(ValueError, match='gram_tokens_used'):
        build(gram_tokens_used='some')


def test_gram_tokens_subsets(real_images):
    batch = real_batch(real_images, gram_size=None)
    for used in ('masked', 'unmasked'):
        model = build(gram_tokens_used=used)
        _perturb(model.gram_teacher)
        model.train()
        losses = model(**batch, mode='loss')
        masks = batch['collated_masks']
        sel = masks if used == 'masked' else ~masks
        with torch.no_grad():
            t = model.gram_teacher.backbone.forward_features(
                batch['collated_global_crops'])['x_norm_patchtokens'][sel]
            s = model.student.backbone.forward_features(batch['collated_global_crops'],
                                                        masks=masks)['x_norm_patchtokens'][sel]
        torch.testing.assert_close(losses['gram_loss'].detach(), ref_gram(s[None], t[None]),
                                   rtol=1e-5, atol=1e-7)


def test_schedule_values_hand_checked():
    # warm-up endpoint excluded; cosine midpoint is the mean of peak and end.
    assert linear_warmup_cosine_decay(0, 0.0, 1.0, 2.0, 10, 10) == 0.0
    assert linear_warmup_cosine_decay(5, 0.0, 1.0, 2.0, 10, 10) == pytest.approx(0.5)
    assert linear_warmup_cosine_decay(10, 0.0, 1.0, 2.0, 10, 10) == pytest.approx(1.0)
    assert linear_warmup_cosine_decay(15, 0.0, 1.0, 2.0, 10, 10) == pytest.approx(1.5)
    assert linear_warmup_cosine_decay(20, 0.0, 1.0, 2.0, 10, 10) == 2.0
    assert linear_warmup_cosine_decay(999, 0.0, 1.0, 2.0, 10, 10) == 2.0
    # Official gram weight (ViT-7B stage 2, shifted to the stage start): 0, then cosine to 2.
    hook = LossWeightScheduleHook('gram_loss_weight', 0.0, 0.0, 2.0, warmup_iters=4,
                                  cosine_iters=2)
    assert [hook.value(i) for i in range(7)] == pytest.approx([0, 0, 0, 0, 0, 1.0, 2.0])


def test_refresh_rule_counts():
    hook = GramTeacherRefreshHook(it_first_update=5, update_frequency=2, max_updates=3)
    # (it + 1) in {6, 8, 10} qualify; 12 would exceed max_updates.
    assert [hook._n_done(s) for s in (4, 6, 7, 8, 10, 12)] == [0, 1, 1, 2, 3, 3]


def test_multi_resolution_batches_have_one_size(real_images):
    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            key = sorted(real_images)[i]
            return {'img': Image.fromarray(real_images[key])}

    dataset = MultiResolutionDataset(
        Photos(), dict(local_crops_number=1, gram_teacher_no_distortions=True),
        global_crops_sizes=[32, 48], local_crops_sizes=[16, 24], gram_teacher_crops_sizes=[48, 64])
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=40)
    sampler.dataset = dataset
    batches = MultiResolutionBatchSampler(sampler, batch_size=2, ratios=[0.7, 0.3], seed=3)
    assert len(batches) == 20
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                         collate_fn=lambda b: dino_collate(b, patch_size=8))
    seen = []
    for batch in loader:
        size = batch['collated_global_crops'].shape[-1]
        expected = {32: (16, 48), 48: (24, 64)}[size]
        assert batch['collated_local_crops'].shape[-1] == expected[0]
        assert batch['collated_gram_teacher_crops'].shape[-1] == expected[1]
        seen.append(size)
    assert set(seen) == {32, 48}
    with pytest.raises(ValueError, match='one ratio per'):
        MultiResolutionBatchSampler(sampler, 2, ratios=[1.0])
    with pytest.raises(ValueError, match='equal length'):
        MultiResolutionDataset(Photos(), {}, [32, 48], [16])


def test_train_and_eval_modes():
    model = build()
    model.train()
    assert model.student.training
    assert not model.teacher.training and not model.gram_teacher.training
    assert all(not p.requires_grad for p in model.gram_teacher.parameters())
    assert math.isclose(model.gram_loss_weight, 1.0)
