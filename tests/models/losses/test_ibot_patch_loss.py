import pytest
import torch

from dino_mm.models.losses import iBOTPatchLoss
from dino_mm.registry import MODELS

from tests.oracles import require

oracle_loss = require('dinov2.loss')

K, B, N = 40, 4, 16


def _masks():
    masks = torch.rand(B, N) < 0.4
    masks[0] = False  # an image without masked patches, as the official collate produces
    masks[1, :3] = True
    return masks


def test_registered_with_official_name():
    loss = MODELS.build(dict(type='dino_mm.iBOTPatchLoss', patch_out_dim=K))
    assert isinstance(loss, iBOTPatchLoss)
    assert loss.center.shape == (1, 1, K)


@pytest.mark.parametrize('with_group', [False, True])
def test_softmax_center_and_updates_match_official(with_group, request):
    if with_group:
        request.getfixturevalue('gloo_group')
    ours, ref = iBOTPatchLoss(K), oracle_loss.iBOTPatchLoss(K)
    for it in range(3):
        teacher = torch.randn(1, 20 + it, K) * 3
        t_ours = ours.softmax_center_teacher(teacher, teacher_temp=0.06)
        t_ref = ref.softmax_center_teacher(teacher, teacher_temp=0.06)
        torch.testing.assert_close(t_ours, t_ref, rtol=0, atol=1e-6)
        ours.update_center(teacher)
        ref.update_center(teacher)
    ours.apply_center_update()
    ref.apply_center_update()
    torch.testing.assert_close(ours.center, ref.center, rtol=0, atol=1e-6)


def test_update_center_rejects_2d():
    with pytest.raises(ValueError, match='unsqueeze'):
        iBOTPatchLoss(K).update_center(torch.randn(5, K))


def test_sinkhorn_knopp_matches_official(gloo_group):
    teacher = torch.tanh(torch.randn(23, K))
    n_masked = torch.tensor([23])
    ours = iBOTPatchLoss(K).sinkhorn_knopp_teacher(teacher, 0.05, n_masked)
    ref = oracle_loss.iBOTPatchLoss(K).sinkhorn_knopp_teacher(teacher, 0.05, n_masked.clone())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    assert n_masked.item() == 23


def test_sinkhorn_knopp_without_process_group():
    teacher = torch.tanh(torch.randn(23, K))
    out = iBOTPatchLoss(K).sinkhorn_knopp_teacher(teacher, 0.05, torch.tensor([23]))
    torch.testing.assert_close(out.sum(-1), torch.ones(23), rtol=0, atol=1e-5)


def test_forward_dense_matches_official():
    masks = _masks()
    student = (torch.randn(B, N, K) * 2).requires_grad_()
    teacher = torch.softmax(torch.randn(B, N, K), -1)
    ours = iBOTPatchLoss(K)(student, teacher, masks)
    ref = oracle_loss.iBOTPatchLoss(K)(student, teacher, masks)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('explicit_weight', [False, True])
def test_forward_masked_matches_official_and_dense(explicit_weight):
    masks = _masks()
    student = torch.randn(B, N, K) * 2
    teacher = torch.softmax(torch.randn(B, N, K), -1)
    s_masked, t_masked = student[masks], teacher[masks]
    weight = None
    if explicit_weight:
        weight = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    # Padding rows (as with the official `upperbound` buffer) must be cut by n_masked_patches.
    n_masked = int(masks.sum())
    s_pad = torch.cat([s_masked, torch.randn(5, K)])
    t_pad = torch.cat([t_masked, torch.softmax(torch.randn(5, K), -1)])
    s_pad.requires_grad_()
    s_ref = s_pad.detach().clone().requires_grad_()
    ours = iBOTPatchLoss(K).forward_masked(s_pad, t_pad, masks, n_masked_patches=n_masked,
                                           masks_weight=weight)
    ref = oracle_loss.iBOTPatchLoss(K).forward_masked(s_ref, t_pad, masks,
                                                      n_masked_patches=n_masked,
                                                      masks_weight=weight)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(s_pad.grad, s_ref.grad, rtol=1e-5, atol=1e-8)
    # Gathered form == dense form except for the image without masks (mean vs. sum over B).
    dense = iBOTPatchLoss(K)(student, teacher, masks)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)
