import math

import pytest
import torch

from dino_mm.models.losses import KoLeoLoss
from dino_mm.registry import MODELS

from tests.oracles import require

oracle_loss = require('dinov2.loss')


def test_registered_with_official_name():
    assert isinstance(MODELS.build(dict(type='dino_mm.KoLeoLoss')), KoLeoLoss)


def test_hand_checked_three_points():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    # Normalised: e1, e2, (e1+e2)/sqrt2. Each point's nearest neighbour is at cosine 1/sqrt2,
    # i.e. distance sqrt(2 - sqrt2).
    expected = -math.log(math.sqrt(2 - math.sqrt(2)))
    assert KoLeoLoss()(x).item() == pytest.approx(expected, abs=1e-6)


def test_matches_official_with_grads():
    feats = torch.randn(16, 32).requires_grad_()
    ref_feats = feats.detach().clone().requires_grad_()
    ours = KoLeoLoss()(feats)
    ref = oracle_loss.KoLeoLoss()(ref_feats)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(feats.grad, ref_feats.grad, rtol=1e-5, atol=1e-7)


def test_computes_in_fp32_under_autocast():
    feats = torch.randn(8, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = KoLeoLoss()(feats.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, KoLeoLoss()(feats.bfloat16().float()))


def test_rejects_single_sample():
    with pytest.raises(ValueError, match='B >= 2'):
        KoLeoLoss()(torch.randn(1, 8))
