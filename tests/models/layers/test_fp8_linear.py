"""fp8 products of the official DINOv3 ``fp8_enabled`` recipe (row-wise e4m3 scaling).

The oracle is the recipe's arithmetic written out in float64 on the e4m3-rounded operands
(what the fp8 product computes exactly, up to its bf16 output), independent of
``torch._scaled_mm``; the gradients of the weight are exact high-precision products.
"""
import pytest
import torch
from torch import nn

from dino_mm.models.layers import LinearKMaskedBias
from dino_mm.models.layers.fp8_linear import (FP8Linear, FP8LinearKMaskedBias,
                                              convert_linears_to_fp8, fp8_linear)

E4M3 = 448.0


def _rounded(t: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """``t`` as the fp8 product sees it: scaled onto the e4m3 range, rounded, scaled back."""
    scale = amax.double().clamp(min=1e-12) / E4M3
    return (t.double() / scale).to(torch.float8_e4m3fn).double() * scale


def test_forward_is_the_row_scaled_e4m3_product():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 5, 64), torch.randn(128, 64) * 0.1, torch.randn(128)
    out = fp8_linear(x, w, b)
    assert out.shape == (2, 5, 128)
    x2 = x.reshape(-1, 64)
    want = _rounded(x2, x2.abs().amax(-1, keepdim=True)) @ _rounded(
        w, w.abs().amax(-1, keepdim=True)).t()
    got = out.reshape(-1, 128).double() - b.double()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)  # bf16 output rounding
    # and fp8 is an approximation of the fp32 layer, not something else
    exact = nn.functional.linear(x, w, b)
    assert (out.float() - exact).norm() / exact.norm() < 0.05


def test_backward_input_grad_in_fp8_weight_grad_exact():
    torch.manual_seed(1)
    x = torch.randn(8, 64, requires_grad=True)
    w = (torch.randn(64, 64) * 0.1).requires_grad_()
    b = torch.zeros(64, requires_grad=True)
    g = torch.randn(8, 64)
    fp8_linear(x, w, b).float().backward(g)
    # input gradient: fp8 product of the output gradient (row scales) and the weight
    # (one tensor-wide scale)
    want_x = _rounded(g, g.abs().amax(-1, keepdim=True)) @ _rounded(w.detach(),
                                                                    w.detach().abs().amax())
    torch.testing.assert_close(x.grad.double(), want_x, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad, g.t() @ x.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, g.sum(0))


def test_convert_keeps_names_and_refuses_what_it_cannot_do():
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    torch.manual_seed(0)
    vit = DinoVisionTransformer(arch='dinov3_vits16', patch_size=16, embed_dim=64, depth=2,
                                num_heads=2, layerscale_init=1.0,
                                pos_embed_rope_rescale_coords=None)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit.forward_features(x)['x_norm_clstoken']
    names = convert_linears_to_fp8(vit, 'blocks')
    assert len(names) == 2 * 4  # qkv, proj, fc1, fc2 per block
    assert all(n.startswith('blocks.') for n in names)
    assert isinstance(vit.blocks[0].attn.qkv, FP8LinearKMaskedBias)  # DINOv3 masked k bias
    assert isinstance(vit.blocks[0].mlp.fc1, FP8Linear)
    after = vit.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k])
                                               for k in before)
    with torch.no_grad():
        got = vit.forward_features(x)['x_norm_clstoken']
    assert torch.isfinite(got).all()
    assert nn.functional.cosine_similarity(got.float(), ref, dim=-1).min() > 0.99
    with pytest.raises(ValueError, match='no nn.Linear'):
        convert_linears_to_fp8(nn.Sequential(nn.Linear(64, 64)), 'blocks')
    with pytest.raises(ValueError, match='multiple of 64'):
        convert_linears_to_fp8(nn.ModuleDict(dict(blocks=nn.Linear(64, 48))), 'blocks')
    masked = LinearKMaskedBias(64, 192)
    convert_linears_to_fp8(nn.ModuleDict(dict(blocks=masked)), 'blocks')
    out = masked(torch.randn(3, 64))
    assert out.shape == (3, 192)
