import copy

import pytest
import torch

from dino_mm.models.heads import DINOHead
from dino_mm.registry import MODELS

from tests.oracles import require

oracle_layers = require('dinov2.layers')

CFG = dict(in_dim=32, out_dim=96, hidden_dim=64, bottleneck_dim=24, nlayers=3)


def _oracle(**kwargs):
    with pytest.warns(FutureWarning):  # legacy weight_norm in the official head
        return oracle_layers.DINOHead(**kwargs)


def test_keys_shapes_and_init_match_official_for_same_seed():
    torch.manual_seed(3)
    ours = DINOHead(**CFG)
    torch.manual_seed(3)
    ref = _oracle(**CFG)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd) == [
        'mlp.0.weight', 'mlp.0.bias', 'mlp.2.weight', 'mlp.2.bias', 'mlp.4.weight', 'mlp.4.bias',
        'last_layer.weight_g', 'last_layer.weight_v'
    ]
    for key in ref_sd:
        torch.testing.assert_close(ours_sd[key], ref_sd[key], rtol=0, atol=0, msg=key)
    assert torch.equal(ours.last_layer.weight_g, torch.ones(CFG['out_dim'], 1))
    assert ours_sd['mlp.0.bias'].abs().sum() == 0
    assert ours_sd['mlp.0.weight'].std().item() == pytest.approx(0.02, rel=0.15)


def test_forward_and_grads_match_official_after_loading_its_weights():
    ref = _oracle(**CFG)
    with torch.no_grad():  # make g non-trivial so the weight-norm scaling is exercised
        ref.last_layer.weight_g.uniform_(0.5, 2.0)
    ours = DINOHead(**CFG)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(10, CFG['in_dim'])
    out, out_ref = ours(x), ref(x)
    assert out.shape == (10, CFG['out_dim'])
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    for (name, p), p_ref in zip(ours.named_parameters(), [
            ref.mlp[0].weight, ref.mlp[0].bias, ref.mlp[2].weight, ref.mlp[2].bias,
            ref.mlp[4].weight, ref.mlp[4].bias, ref.last_layer.weight_g, ref.last_layer.weight_v
    ]):
        # Relative to the largest entry: gradients through the L2 normalisation reach ~1e3.
        err = (p.grad - p_ref.grad).abs().max() / p_ref.grad.abs().max()
        assert err < 1e-5, (name, err.item())


def test_registered_and_deepcopyable():
    head = MODELS.build(dict(type='dino_mm.DINOHead', **CFG))
    clone = copy.deepcopy(head)
    x = torch.randn(4, CFG['in_dim'])
    torch.testing.assert_close(clone(x), head(x))


def test_plain_last_layer_for_dinov3():
    head = DINOHead(**CFG, weight_norm_last_layer=False)
    assert 'last_layer.weight' in head.state_dict()
    assert not any('weight_g' in k for k in head.state_dict())
    assert head.last_layer.weight.std().item() == pytest.approx(0.02, rel=0.15)


@pytest.mark.parametrize('nlayers,use_bn', [(1, False), (2, True), (4, False)])
def test_depth_and_bn_variants_match_official_keys(nlayers, use_bn):
    cfg = dict(CFG, nlayers=nlayers, use_bn=use_bn)
    ref = _oracle(**cfg).eval()
    ours = DINOHead(**cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(6, CFG['in_dim'])
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)


def test_output_is_cosine_with_unit_prototypes():
    head = DINOHead(**CFG)
    out = head(torch.randn(5, CFG['in_dim']))
    # g = 1 and a normalised bottleneck: every logit is a cosine.
    assert out.abs().max() <= 1 + 1e-6
