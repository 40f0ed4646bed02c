"""DINODistributedDataParallel keeps DINOv2's clipping / NaN stop (1-rank gloo group).

The 2-rank equality with a single process is checked in tests/pretrain/test_dist_pretrain.py.
"""
import pytest
import torch
from mmengine.optim import OptimWrapper

from dino_mm.engine.model_wrappers import DINODistributedDataParallel


def _model(clip_grad):
    from dino_mm.registry import MODELS
    try:
        import mmcv  # noqa: F401
    except ImportError:  # MODELS' locations include the mmseg glue; DINO parts are loaded
        MODELS._imported = True
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='dino_mm.DINOv2',
        backbone=dict(type='dino_mm.DinoVisionTransformer', arch='dinov2_vits14', patch_size=8,
                      img_size=16, embed_dim=32, depth=1, num_heads=2),
        dino_head=dict(type='dino_mm.DINOHead', out_dim=16, hidden_dim=32, bottleneck_dim=16),
        koleo_loss_weight=0.0, clip_grad=clip_grad))


def _batch(scale=1.0):
    masks = torch.zeros(4, 4, dtype=torch.bool)
    masks[0, :2] = True
    idx = masks.flatten().nonzero().flatten()
    return dict(collated_global_crops=torch.randn(4, 3, 16, 16) * scale,
                collated_local_crops=torch.randn(4, 3, 8, 8), collated_masks=masks,
                mask_indices_list=idx, masks_weight=torch.full((2,), 0.5),
                n_masked_patches=torch.tensor([2]), upperbound=2)


def test_train_step_clips_per_submodule(group):
    model = _model(clip_grad=1e-3)
    ddp = DINODistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False)
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=0.0))
    seen = {}
    orig_step = optim.step

    def step(**kwargs):
        for name, sub in model.student.items():
            grads = [p.grad for p in sub.parameters() if p.grad is not None]
            seen[name] = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads])).item()
        orig_step(**kwargs)

    optim.step = step
    log_vars = ddp.train_step(_batch(), optim)
    # mmengine's MMDistributedDataParallel.train_step would log no grad norms and not clip
    assert {'grad_norm_backbone', 'grad_norm_dino_head'} <= set(log_vars)
    assert all(float(log_vars[f'grad_norm_{k}']) > 1e-3 for k in seen)
    assert all(v == pytest.approx(1e-3, rel=1e-3) for v in seen.values()), seen


def test_train_step_refuses_double_clipping_and_nan(group):
    model = _model(clip_grad=3.0)
    ddp = DINODistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False)
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=0.1),
                         clip_grad=dict(max_norm=1.0))
    with pytest.raises(ValueError, match='clips gradients per student sub-module'):
        ddp.train_step(_batch(), optim)
    optim = OptimWrapper(torch.optim.SGD(model.student.parameters(), lr=0.1))
    before = model.student.backbone.cls_token.detach().clone()
    with pytest.raises(FloatingPointError, match='not finite'):
        ddp.train_step(_batch(scale=float('nan')), optim)
    assert torch.equal(model.student.backbone.cls_token, before)
