import math

import torch

from dino_mm.models.layers import RopePositionEmbedding, rope_apply, rope_rotate_half


def test_periods_and_tables_match_formula():
    rope = RopePositionEmbedding(embed_dim=64, num_heads=4, base=100.0).eval()  # d_h = 16
    assert torch.allclose(rope.periods, torch.tensor([100.0 ** (j / 4) for j in range(4)]))
    H, W = 2, 3
    sin, cos = rope(H=H, W=W)
    assert sin.shape == cos.shape == (H * W, 16)
    # token (row 1, col 2): centres (1.5/2, 2.5/3) mapped to [-1, 1]
    ch, cw = 2 * 1.5 / 2 - 1, 2 * 2.5 / 3 - 1
    ang = [2 * math.pi * ch / 100.0 ** (j / 4) for j in range(4)] + \
          [2 * math.pi * cw / 100.0 ** (j / 4) for j in range(4)]
    expected = torch.tensor(ang * 2)
    assert torch.allclose(sin[1 * W + 2], expected.sin(), atol=1e-6)
    assert torch.allclose(cos[1 * W + 2], expected.cos(), atol=1e-6)


def test_normalize_max_and_min_period_mode():
    rope = RopePositionEmbedding(64, 4, base=None, min_period=1.0, max_period=10.0,
                                 normalize_coords='max').eval()
    assert torch.allclose(rope.periods, 10.0 * 10.0 ** (torch.linspace(0, 1, 4) - 1))
    sin, _ = rope(H=2, W=4)
    # rows are divided by max(H, W) = 4, so the row coordinate of row 0 is 2*0.5/4 - 1
    ang = 2 * math.pi * (2 * 0.5 / 4 - 1) / rope.periods[0]
    assert torch.allclose(sin[0, 0], ang.sin(), atol=1e-6)


def test_train_augmentation_only_in_train_mode():
    rope = RopePositionEmbedding(64, 4, rescale_coords=2.0, shift_coords=0.1)
    rope.eval()
    a, b = rope(H=3, W=3), rope(H=3, W=3)
    assert torch.equal(a[0], b[0])
    rope.train()
    c = rope(H=3, W=3)
    assert not torch.allclose(a[0], c[0])


def test_rope_apply_is_a_rotation():
    x = torch.randn(2, 5, 16)
    rope = RopePositionEmbedding(64, 4).eval()
    sin, cos = rope(H=1, W=5)
    y = rope_apply(x, sin, cos)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.equal(rope_rotate_half(torch.tensor([1., 2., 3., 4.])),
                       torch.tensor([-3., -4., 1., 2.]))


def test_bf16_dtype_and_fp32_under_autocast():
    rope = RopePositionEmbedding(64, 4, dtype='bf16').eval()
    assert rope.periods.dtype == torch.bfloat16 and rope(H=2, W=2)[0].dtype == torch.bfloat16
    fp32 = RopePositionEmbedding(64, 4).eval()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        sin, _ = fp32(H=2, W=2)
    assert sin.dtype == torch.float32
