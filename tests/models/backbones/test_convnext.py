"""DinoConvNeXt: official key layout, parity with HF transformers and timm, mm* API."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from dino_mm.models.backbones.convnext import DinoConvNeXt
from dino_mm.models.converters import convert_state_dict

DEPTHS, DIMS = [1, 1, 2, 1], [16, 32, 48, 64]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _images(real_images, size):
    """Real photographs, resized to ``size`` (H, W) and ImageNet-normalised."""
    batch = []
    for name in ('astronaut', 'chelsea'):
        img = torch.from_numpy(np.ascontiguousarray(real_images[name])).permute(2, 0, 1)
        img = img[None].float() / 255
        batch.append(F.interpolate(img, size=size, mode='bilinear', antialias=True))
    return (torch.cat(batch) - MEAN) / STD


def _random_official_state_dict():
    """A tiny ConvNeXt whose layer scales / norms are far from their init, so a wrong
    mapping of any tensor changes the output."""
    model = DinoConvNeXt(depths=DEPTHS, dims=DIMS)
    sd = model.state_dict()
    gen = torch.Generator().manual_seed(1)
    for key, value in sd.items():
        if key.startswith('norms.'):
            continue  # alias of ``norm``: same storage, filled below through ``norm.*``
        if key.endswith('gamma') or 'norm' in key or key.endswith('.1.weight'):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.5 + (
                1.0 if key.endswith('weight') and 'norm' in key else 0.0))
    return sd


@pytest.fixture(scope='module')
def official_sd():
    return _random_official_state_dict()


def test_official_keys_and_strict_load(official_sd):
    expected = {'downsample_layers.0.0.weight', 'downsample_layers.0.1.bias',
                'downsample_layers.3.0.weight', 'downsample_layers.3.1.bias',
                'stages.2.1.dwconv.weight', 'stages.2.1.norm.weight', 'stages.2.1.pwconv1.bias',
                'stages.2.1.pwconv2.weight', 'stages.2.1.gamma', 'norm.weight', 'norms.3.weight',
                'norms.3.bias'}
    assert expected <= set(official_sd)
    assert not any(k.startswith(('norms.0', 'norms.1', 'norms.2', 'head')) for k in official_sd)
    model = DinoConvNeXt(depths=DEPTHS, dims=DIMS)
    # The file of an official checkpoint carries both copies; strict loading needs both.
    model.load_state_dict({k: v.clone() for k, v in official_sd.items()}, strict=True)
    assert model.norms[3] is model.norm
    no_alias = {k: v for k, v in official_sd.items() if not k.startswith('norms.')}
    with pytest.raises(RuntimeError, match='norms.3'):
        model.load_state_dict(no_alias, strict=True)


@pytest.mark.parametrize('size', [(224, 224), (192, 288)])
def test_parity_with_hf_and_timm(official_sd, real_images, size):
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel
    x = _images(real_images, size)
    ours = DinoConvNeXt(depths=DEPTHS, dims=DIMS).eval()
    ours.load_state_dict(official_sd, strict=True)
    hf = DINOv3ConvNextModel(DINOv3ConvNextConfig(depths=DEPTHS, hidden_sizes=DIMS)).eval()
    hf.load_state_dict(convert_state_dict(official_sd, to='hf'), strict=True)
    tm = timm.create_model('convnext_tiny', depths=DEPTHS, dims=DIMS, num_classes=0).eval()
    tm.load_state_dict(convert_state_dict(official_sd, to='timm'), strict=True)
    # timm's own filter for official checkpoints must agree with ours.
    timm_filtered = timm.models.convnext.checkpoint_filter_fn(dict(official_sd), tm)
    assert set(timm_filtered) == set(convert_state_dict(official_sd, to='timm'))

    with torch.no_grad():
        out = ours.forward_features(x)
        ref = hf(x, output_hidden_states=True)
        errs = {
            'hf_cls': (out['x_norm_clstoken'] - ref.pooler_output).abs().max(),
            'hf_patch': (out['x_norm_patchtokens'] - ref.last_hidden_state[:, 1:]).abs().max(),
        }
        maps = ours.get_intermediate_layers(x, n=4, reshape=True, norm=False)
        for i, (mine, theirs) in enumerate(zip(maps, ref.hidden_states[-4:])):
            errs[f'hf_stage{i}'] = (mine - theirs).abs().max()
        errs['timm_cls'] = (out['x_norm_clstoken'] - tm(x)).abs().max()
        timm_map = tm.forward_features(x)
        timm_tokens = tm.head.norm(timm_map).flatten(2).transpose(1, 2)
        errs['timm_patch'] = (out['x_norm_patchtokens'] - timm_tokens).abs().max()
        _, timm_stages = tm.forward_intermediates(x, indices=4, intermediates_only=False)
        for i, (mine, theirs) in enumerate(zip(maps, timm_stages)):
            errs[f'timm_stage{i}'] = (mine - theirs).abs().max()
    h, w = size
    assert out['x_norm_patchtokens'].shape == (2, (h // 32) * (w // 32), DIMS[-1])
    assert out['x_prenorm'].shape == out['x_norm_patchtokens'].shape
    assert out['x_storage_tokens'].shape == (2, 0, DIMS[-1])
    print('max abs err', size, {k: float(v) for k, v in errs.items()})
    for name, err in errs.items():
        assert err <= 1e-4, (name, float(err))


@pytest.mark.parametrize('arch,published', [('tiny', 29), ('small', 50), ('base', 89),
                                            ('large', 198)])
def test_full_size_parameter_counts(arch, published):
    with torch.device('meta'):
        model = DinoConvNeXt(arch=f'dinov3_convnext_{arch}')
    n_params = sum(p.numel() for p in model.parameters())  # the norms.3 alias counts once
    # The published sizes are those of the ConvNeXt paper, which include the 1000-class
    # ImageNet classifier; the DINOv3 backbones have no head (tiny: 27.8M without it).
    with_head = n_params + model.embed_dim * 1000 + 1000
    assert round(with_head / 1e6) == published, (n_params, with_head)
    assert round(n_params / 1e6) < published
    assert model.embed_dim == model.embed_dims[-1]


def test_get_intermediate_layers(official_sd, real_images):
    model = DinoConvNeXt(depths=DEPTHS, dims=DIMS).eval()
    model.load_state_dict(official_sd)
    x = _images(real_images, (128, 192))
    with torch.no_grad():
        feats = model.forward_features(x)
        last = model.get_intermediate_layers(x, n=1, return_class_token=True)
        two = model.get_intermediate_layers(x, n=[1, 3], reshape=True)
        raw = model.get_intermediate_layers(x, n=2, norm=False)
    patches, cls = last[0]
    torch.testing.assert_close(patches, feats['x_norm_patchtokens'], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, feats['x_norm_clstoken'], atol=1e-5, rtol=1e-5)
    assert [t.shape for t in two] == [(2, 32, 16, 24), (2, 64, 4, 6)]
    assert raw[0].shape == (2, 8 * 12, 48)  # tokens (B, HW, C) when not reshaped
    # norms[0..2] are identities: stage 1 maps are the same with and without norm
    torch.testing.assert_close(two[0].flatten(2).transpose(1, 2),
                               model.get_intermediate_layers(x, n=[1], norm=False)[0])
    # patch_size: maps resized (bilinear, antialias) to the grid of a ViT/16
    model.patch_size = 16
    with torch.no_grad():
        resized = model.get_intermediate_layers(x, n=4, reshape=True)
    assert all(t.shape[-2:] == (8, 12) for t in resized)
    with pytest.raises(ValueError, match='stage indices'):
        model.get_intermediate_layers(x, n=[5])


def test_forward_out_types_and_frozen_stages(official_sd, real_images):
    x = _images(real_images, (96, 128))
    model = DinoConvNeXt(depths=DEPTHS, dims=DIMS).eval()
    model.load_state_dict(official_sd)
    dense = DinoConvNeXt(depths=DEPTHS, dims=DIMS, out_indices=(0, 1, 2, -1),
                         frozen_stages=2).eval()
    dense.load_state_dict(official_sd)
    with torch.no_grad():
        cls = model(x)
        feats = model.forward_features(x)
        maps = dense(x)
    torch.testing.assert_close(cls, feats['x_norm_clstoken'])
    assert [m.shape for m in maps] == [(2, 16, 24, 32), (2, 32, 12, 16), (2, 48, 6, 8),
                                       (2, 64, 3, 4)]
    # the last map is normalised per pixel, like get_intermediate_layers(norm=True)
    torch.testing.assert_close(maps[3].flatten(2).transpose(1, 2),
                               feats['x_norm_patchtokens'], atol=1e-5, rtol=1e-5)
    dense.train()
    assert not dense.stages[1].training and dense.stages[2].training
    frozen = [n for n, p in dense.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(('downsample_layers.0', 'downsample_layers.1',
                                        'stages.0', 'stages.1')) for n in frozen)
    pairs = DinoConvNeXt(depths=DEPTHS, dims=DIMS, out_indices=[3], out_type='cls_featmap')
    pairs.load_state_dict(official_sd)
    with torch.no_grad():
        (fmap, pooled), = pairs.eval()(x)
    torch.testing.assert_close(pooled, feats['x_norm_clstoken'], atol=1e-5, rtol=1e-5)


def test_drop_path_and_arch_errors(real_images):
    x = _images(real_images, (64, 64))
    model = DinoConvNeXt(depths=DEPTHS, dims=DIMS, drop_path_rate=0.5,
                         layer_scale_init_value=1.0)
    with torch.no_grad():
        a, b = model.train()(x), model(x)
        c, d = model.eval()(x), model(x)
    assert not torch.allclose(a, b) and torch.equal(c, d)
    assert model.stages[3][0].drop_path.drop_prob == pytest.approx(0.5)
    assert isinstance(model.stages[0][0].drop_path, torch.nn.Identity)  # linspace starts at 0
    with torch.device('meta'):
        assert DinoConvNeXt(arch='convnext_small').depths == [3, 3, 27, 3]
    with pytest.raises(ValueError, match="unknown arch 'huge'"):
        DinoConvNeXt(arch='huge')
    with pytest.raises(ValueError, match='out_type'):
        DinoConvNeXt(depths=DEPTHS, dims=DIMS, out_type='tokens')


def test_hub_and_init_cfg(official_sd, tmp_path, real_images):
    from dino_mm.hub.convnext import dinov3_convnext_base, dinov3_convnext_tiny
    with pytest.raises(FileNotFoundError,
                       match='dinov3_convnext_base_pretrain_lvd1689m-801f2ba9.pth'):
        dinov3_convnext_base(pretrained=True)
    path = tmp_path / 'tiny_official.pth'
    torch.save(official_sd, path)
    model = dinov3_convnext_tiny(weights=str(path), depths=DEPTHS, dims=DIMS).eval()
    x = _images(real_images, (64, 64))
    ref = DinoConvNeXt(depths=DEPTHS, dims=DIMS).eval()
    ref.load_state_dict(official_sd)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)
    # an HF-layout file loads through the hub as well (converted on the fly)
    hf_path = tmp_path / 'tiny_hf.pth'
    torch.save(convert_state_dict(official_sd, to='hf'), hf_path)
    model = dinov3_convnext_tiny(weights=str(hf_path), depths=DEPTHS, dims=DIMS).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match='no such file'):
        dinov3_convnext_tiny(weights=str(tmp_path / 'missing.pth'))
    # mmengine init_cfg
    model = DinoConvNeXt(depths=DEPTHS, dims=DIMS,
                         init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    torch.testing.assert_close(model.state_dict()['stages.2.1.gamma'],
                               official_sd['stages.2.1.gamma'])
