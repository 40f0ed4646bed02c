import pytest
import torch

from dino_mm.models.layers import Block, LayerScale, PatchEmbed, RMSNorm, batch_subset_residual


def test_batch_subset_residual_scales_kept_samples():
    torch.manual_seed(0)
    x = torch.zeros(8, 3, 4)
    out = batch_subset_residual(x, lambda t: torch.ones_like(t), 0.5)
    touched = out.flatten(1).abs().sum(1) > 0
    assert touched.sum() == 4
    assert torch.allclose(out[touched], torch.full((4, 3, 4), 2.0))  # scale B / kept
    one = batch_subset_residual(torch.zeros(2, 1), lambda t: t + 1, 0.99)
    assert (one != 0).sum() == 1  # at least one sample is kept


@pytest.mark.parametrize('mode,rate,subset', [('v2', 0.05, False), ('v2', 0.3, True),
                                              ('v3', 0.05, True)])
def test_block_drop_path_schemes(mode, rate, subset, monkeypatch):
    calls = []
    import dino_mm.models.layers.block as block_mod
    real = block_mod.batch_subset_residual
    monkeypatch.setattr(block_mod, 'batch_subset_residual',
                        lambda *a: calls.append(1) or real(*a))
    blk = Block(16, 2, drop_path=rate, init_values=1.0, drop_path_mode=mode).train()
    blk(torch.randn(4, 5, 16))
    assert bool(calls) == subset
    calls.clear()
    blk.eval()(torch.randn(4, 5, 16))
    assert not calls


def test_block_is_pre_norm_residual():
    blk = Block(16, 2, init_values=0.5).eval()
    x = torch.randn(2, 5, 16)
    y = x + blk.ls1(blk.attn(blk.norm1(x)))
    y = y + blk.ls2(blk.mlp(blk.norm2(y)))
    assert torch.allclose(blk(x), y, atol=1e-6)
    assert isinstance(Block(16, 2, init_values=None).ls1, torch.nn.Identity)


def test_layer_scale_and_rmsnorm():
    ls = LayerScale(4, 0.1)
    assert list(ls.state_dict()) == ['gamma']
    assert torch.allclose(ls(torch.ones(2, 4)), torch.full((2, 4), 0.1))
    norm = RMSNorm(4)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(norm(x), x / (x.pow(2).mean() + 1e-5).sqrt())
    # statistics in fp32, result rounded to the input dtype before the weight
    xb = x.bfloat16() * 1000
    assert torch.equal(norm(xb), (xb.float() * (xb.float().pow(2).mean() + 1e-5).rsqrt())
                       .bfloat16() * norm.weight)


def test_patch_embed_errors_and_layout():
    pe = PatchEmbed(4, 3, 8)
    assert pe(torch.randn(1, 3, 8, 12)).shape == (1, 6, 8)
    with pytest.raises(ValueError, match='not a multiple of the patch size 4'):
        pe(torch.randn(1, 3, 9, 12))
    lax = PatchEmbed(4, 3, 8, strict_img_size=False)
    assert lax(torch.randn(1, 3, 9, 13)).shape == (1, 6, 8)
    with pytest.raises(ValueError, match='Expected 3 input channels, got 4'):
        pe(torch.randn(1, 4, 8, 8))
