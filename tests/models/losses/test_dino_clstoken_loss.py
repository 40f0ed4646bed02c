import copy

import pytest
import torch

from dino_mm.models.losses import DINOLoss
from dino_mm.registry import MODELS

from tests.oracles import require

oracle_loss = require('dinov2.loss')

K, B = 48, 6


def _logits(*shape, scale=3.0):
    return torch.randn(*shape, dtype=torch.float64).float() * scale


def test_registered_with_official_name():
    loss = MODELS.build(dict(type='dino_mm.DINOLoss', out_dim=K))
    assert isinstance(loss, DINOLoss)
    assert loss.center.shape == (1, K)
    assert list(loss.state_dict()) == ['center']


@pytest.mark.parametrize('with_group', [False, True])
def test_softmax_center_and_updates_match_official(with_group, request):
    if with_group:
        request.getfixturevalue('gloo_group')
    ours, ref = DINOLoss(K), oracle_loss.DINOLoss(K)
    for it in range(4):
        teacher = _logits(2 * B, K)
        temp = 0.04 + 0.01 * it
        t_ours = ours.softmax_center_teacher(teacher, teacher_temp=temp)
        t_ref = ref.softmax_center_teacher(teacher, teacher_temp=temp)
        torch.testing.assert_close(t_ours, t_ref, rtol=0, atol=1e-6)
        ours.update_center(teacher)
        ref.update_center(teacher)
        assert not ours.updated
    ours.apply_center_update()
    ref.apply_center_update()
    torch.testing.assert_close(ours.center, ref.center, rtol=0, atol=1e-6)
    assert ours.center.abs().sum() > 0


def test_center_ema_by_hand():
    loss = DINOLoss(3, center_momentum=0.5)
    loss.update_center(torch.tensor([[2., 0., 4.], [0., 2., 0.]]))
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, torch.tensor([[0.5, 0.5, 1.0]]))


def test_state_dict_flushes_pending_center_update():
    loss = DINOLoss(K)
    teacher = _logits(B, K)
    loss.update_center(teacher)
    saved = copy.deepcopy(loss.state_dict())
    torch.testing.assert_close(saved['center'], 0.1 * teacher.mean(0, keepdim=True))
    fresh = DINOLoss(K)
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.softmax_center_teacher(teacher, 0.07),
                               loss.softmax_center_teacher(teacher, 0.07))


@pytest.mark.parametrize('with_group', [False, True])
def test_sinkhorn_knopp_matches_official(with_group, request):
    if with_group:
        request.getfixturevalue('gloo_group')
    # |logit| <= 1 like real head outputs (unit bottleneck, unit prototypes).
    teacher = torch.tanh(_logits(2 * B, K))
    ours = DINOLoss(K).sinkhorn_knopp_teacher(teacher, teacher_temp=0.05)
    ref = oracle_loss.DINOLoss(K).sinkhorn_knopp_teacher(teacher, teacher_temp=0.05)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    # An assignment: each sample's row is a distribution.
    torch.testing.assert_close(ours.sum(-1), torch.ones(2 * B), rtol=0, atol=1e-5)


def test_sinkhorn_knopp_fp16_input_gives_fp32():
    teacher = torch.tanh(_logits(B, K)).half()
    out = DINOLoss(K).sinkhorn_knopp_teacher(teacher, teacher_temp=0.04)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_forward_matches_official_including_grads():
    student = _logits(3, B, K).requires_grad_()
    teacher = torch.softmax(_logits(2, B, K), dim=-1)
    ours = DINOLoss(K)(list(student), list(teacher))
    ref_student = student.detach().clone().requires_grad_()
    ref = oracle_loss.DINOLoss(K)(list(ref_student), list(teacher))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-5, atol=1e-7)


def test_ignore_diagonal_skips_same_crop_pairs():
    loss = DINOLoss(K)
    student = _logits(2, B, K)
    teacher = torch.softmax(_logits(2, B, K), dim=-1)
    full = loss(list(student), list(teacher))
    no_diag = loss(list(student), list(teacher), ignore_diagonal=True)
    diag = loss([student[0]], [teacher[0]]) + loss([student[1]], [teacher[1]])
    torch.testing.assert_close(no_diag, full - diag)
    # DINOv3 mean form: same pairs divided by the number of counted (sample, pair) terms.
    mean_form = loss.cross_entropy_mean(student, teacher, ignore_diagonal=True)
    torch.testing.assert_close(mean_form, no_diag / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.cross_entropy_mean(student, teacher), full / 4, rtol=1e-5,
                               atol=1e-6)


def test_cross_entropy_mean_rejects_2d():
    with pytest.raises(ValueError, match='crops, batch, prototypes'):
        DINOLoss(K).cross_entropy_mean(_logits(B, K), _logits(B, K))
