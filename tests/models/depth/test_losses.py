"""SigLoss and GradientLoss against hand-written restatements of the official formulas."""
import math

import pytest
import torch

from dino_mm.models.depth.losses import GradientLoss, SigLoss


def test_sigloss_formula_and_mask():
    gt = torch.tensor([[1.0, 2.0, 0.0], [4.0, 20.0, 3.0]])
    pred = torch.tensor([[1.5, 1.0, 7.0], [4.0, 8.0, 2.0]])
    loss = SigLoss(loss_weight=2.0, max_depth=10.0)(pred, gt)
    keep = [(1.5, 1.0), (1.0, 2.0), (4.0, 4.0), (2.0, 3.0)]  # gt 0 and gt 20 > max dropped
    g = [math.log(p + 1e-3) - math.log(t + 1e-3) for p, t in keep]
    mean = sum(g) / 4
    var = sum((x - mean)**2 for x in g) / 3  # unbiased, as torch.var
    assert loss.item() == pytest.approx(2.0 * math.sqrt(var + 0.15 * mean**2), rel=1e-6)


def test_sigloss_scale_invariance_and_zero():
    gt = torch.rand(2, 1, 8, 8) * 5 + 0.5
    assert SigLoss()(gt.clone(), gt).item() == pytest.approx(0, abs=1e-6)
    # a global scale only leaves the 0.15*mean^2 term: sqrt(0.15)*|log s| (eps aside)
    val = SigLoss()(gt * 2, gt).item()
    assert val == pytest.approx(math.sqrt(0.15) * math.log(2), rel=2e-3)


def test_gradient_loss_reference():
    torch.manual_seed(0)
    gt = torch.rand(13, 17) * 4 + 0.5
    gt[3, 5] = 0
    pred = torch.rand(13, 17) * 4 + 0.5
    ref = 0.0
    for s in (1, 2, 4, 6):
        p, t = pred[::s, ::s], gt[::s, ::s]
        m = (t > 0).float()
        d = (torch.log(p + 1e-3) - torch.log(t + 1e-3)) * m
        acc = 0.0
        for i in range(d.shape[0]):
            for j in range(d.shape[1]):
                if i + 2 < d.shape[0]:
                    acc += abs(d[i, j] - d[i + 2, j]) * m[i, j] * m[i + 2, j]
                if j + 2 < d.shape[1]:
                    acc += abs(d[i, j] - d[i, j + 2]) * m[i, j] * m[i, j + 2]
        ref += acc / m.sum()
    got = GradientLoss(loss_weight=0.5)(pred[None, None], gt[None, None])
    assert got.item() == pytest.approx(0.5 * float(ref), rel=1e-5)
    assert GradientLoss()(gt[None], gt[None]).item() == pytest.approx(0, abs=1e-7)
