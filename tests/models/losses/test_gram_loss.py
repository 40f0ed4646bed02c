import pytest
import torch

from dino_mm.models.losses import GramLoss
from dino_mm.registry import MODELS


def _reference(student, teacher, apply_norm, img_level, remove_neg, teacher_only):
    """Independent loop implementation of docs/reference.md §4.2."""

    def gram(x):
        x = x.double()
        if apply_norm:
            x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return x @ x.T

    if img_level:
        pairs = [(gram(s), gram(t)) for s, t in zip(student, teacher)]
    else:
        pairs = [(gram(student.flatten(0, 1)), gram(teacher.flatten(0, 1)))]
    total, count = 0.0, 0
    for gs, gt in pairs:
        if remove_neg or teacher_only:
            gt = torch.where(gt < 0, torch.zeros_like(gt), gt)
        if remove_neg:
            gs = torch.where(gs < 0, torch.zeros_like(gs), gs)
        total += ((gs - gt) ** 2).sum()
        count += gs.numel()
    return total / count


@pytest.mark.parametrize('apply_norm', [True, False])
@pytest.mark.parametrize('img_level', [True, False])
@pytest.mark.parametrize('neg_mode', ['keep', 'remove_neg', 'teacher_only'])
def test_matches_spec_reference(apply_norm, img_level, neg_mode):
    student, teacher = torch.randn(3, 10, 8), torch.randn(3, 10, 8)
    loss = GramLoss(apply_norm=apply_norm, remove_neg=neg_mode == 'remove_neg',
                    remove_only_teacher_neg=neg_mode == 'teacher_only')
    ours = loss(student, teacher, img_level=img_level)
    ref = _reference(student, teacher, apply_norm, img_level, neg_mode == 'remove_neg',
                     neg_mode == 'teacher_only')
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-7)


def test_registered_with_official_name():
    loss = MODELS.build(dict(type='dino_mm.GramLoss', remove_neg=False))
    assert isinstance(loss, GramLoss) and not loss.remove_neg


def test_zero_for_identical_features_and_gradient_flows_to_student_only():
    feats = torch.randn(2, 6, 4)
    assert GramLoss()(feats, feats.clone()).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.randn(2, 6, 4, requires_grad=True)
    target = torch.randn(2, 6, 4, requires_grad=True)
    GramLoss()(student, target).backward()
    assert student.grad.abs().sum() > 0


def test_bf16_inputs_are_upcast():
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    out = GramLoss(remove_neg=False)(s.bfloat16(), t.bfloat16())
    ref = GramLoss(remove_neg=False)(s.bfloat16().float(), t.bfloat16().float())
    torch.testing.assert_close(out, ref)


def test_errors():
    with pytest.raises(ValueError, match='mutually exclusive'):
        GramLoss(remove_neg=True, remove_only_teacher_neg=True)
    with pytest.raises(ValueError, match=r'\(B, P, D\)'):
        GramLoss()(torch.randn(6, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match='same shape'):
        GramLoss()(torch.randn(2, 6, 4), torch.randn(2, 9, 4))
