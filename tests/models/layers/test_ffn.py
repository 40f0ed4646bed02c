import torch
import torch.nn.functional as F

from dino_mm.models.layers import (SwiGLUFFN, SwiGLUFFNFused, build_ffn, swiglu_hidden_dim_v2,
                                   swiglu_hidden_dim_v3)


def test_hidden_size_rules_of_released_models():
    assert swiglu_hidden_dim_v2(6144) == 4096  # ViT-g/14
    assert swiglu_hidden_dim_v3(2304, 8) == 1536  # S+
    assert swiglu_hidden_dim_v3(6144, 8) == 4096  # L+
    assert swiglu_hidden_dim_v3(7680, 8) == 5120  # H+
    assert swiglu_hidden_dim_v3(12288, 64) == 8192  # 7B
    # the two rules differ when int(2h/3) is not a multiple of 8: v2 (+7)//8*8, v3 ceil
    assert swiglu_hidden_dim_v2(100) == 72 and swiglu_hidden_dim_v3(100, 8) == 72
    assert swiglu_hidden_dim_v3(100, 64) == 128


def test_fused_gate_is_first_half():
    ffn = SwiGLUFFNFused(8, 24)
    x = torch.randn(3, 8)
    h = ffn.hidden_features
    gate = x @ ffn.w12.weight[:h].T + ffn.w12.bias[:h]
    value = x @ ffn.w12.weight[h:].T + ffn.w12.bias[h:]
    assert torch.allclose(ffn(x), ffn.w3(F.silu(gate) * value), atol=1e-6)


def test_split_swiglu_and_builder():
    ffn = SwiGLUFFN(8, 24, align_to=8)
    x = torch.randn(3, 8)
    assert torch.allclose(ffn(x), ffn.w3(F.silu(ffn.w1(x)) * ffn.w2(x)))
    assert isinstance(build_ffn('swiglu', 8, 24, version='v2'), SwiGLUFFNFused)
    assert build_ffn('swiglu64', 8, 96).hidden_features == 64
    mlp = build_ffn('mlp', 8, 32)
    keys = set(dict(mlp.named_parameters()))
    assert keys == {'fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias'}
