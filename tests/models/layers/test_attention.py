import pytest
import torch

from dino_mm.models.layers import Attention, LinearKMaskedBias, RopePositionEmbedding


def _manual_attention(attn, x, rope=None):
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if rope is not None:
        q, k = attn.apply_rope(q, rope), attn.apply_rope(k, rope)
    w = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
    return attn.proj((w @ v).transpose(1, 2).reshape(B, N, C))


def test_sdpa_matches_explicit_softmax_attention():
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    assert torch.allclose(attn(x), _manual_attention(attn, x), atol=1e-5)


def test_rope_leaves_prefix_tokens_unrotated():
    attn = Attention(32, num_heads=2, mask_k_bias=True).eval()
    rope = RopePositionEmbedding(32, 2).eval()(H=2, W=3)
    x = torch.randn(1, 1 + 4 + 6, 32)
    out = attn(x, rope=rope)
    assert torch.allclose(out, _manual_attention(attn, x, rope), atol=1e-5)
    q = torch.randn(1, 2, 11, 16)
    rotated = Attention.apply_rope(q, rope)
    assert torch.equal(rotated[:, :, :5], q[:, :, :5])
    assert not torch.allclose(rotated[:, :, 5:], q[:, :, 5:])


def test_linear_k_masked_bias():
    lin = LinearKMaskedBias(4, 12)
    assert 'bias_mask' in lin.state_dict()
    assert lin.bias_mask.tolist() == [1.0] * 4 + [0.0] * 4 + [1.0] * 4
    with torch.no_grad():
        lin.bias.fill_(5.0)
    out = lin(torch.zeros(1, 4))
    assert out[0, 4:8].abs().max() == 0 and (out[0, :4] == 5).all()
    assert 'bias_mask' not in LinearKMaskedBias(4, 12, bias=False).state_dict()
    with pytest.raises(ValueError, match='3 \\* dim'):
        LinearKMaskedBias(4, 10)
