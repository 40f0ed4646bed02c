"""Official ``*_lc`` classifiers: head layout, strict loading, hand-written reference."""
import pytest
import torch

from dino_mm.models.heads.linear import DinoLinearClassifier


def _tiny(**kw):
    from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer
    cfg = dict(arch='dinov2_vits14', depth=4, embed_dim=32, num_heads=2, img_size=28)
    cfg.update(kw)
    m = DinoVisionTransformer(**cfg)
    m.init_weights()
    return m.eval()


@pytest.mark.parametrize('layers', [1, 4])
def test_lc_matches_hand_written_reference(layers, tmp_path, real_images):
    model = DinoLinearClassifier(_tiny(), layers=layers).eval()
    head = {'weight': torch.randn(1000, (1 + layers) * 32), 'bias': torch.randn(1000)}
    torch.save(head, tmp_path / 'head.pth')
    model.load_head(str(tmp_path / 'head.pth'))  # strict: exactly `weight`, `bias`
    img = torch.from_numpy(real_images['chelsea']).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(img, size=(28, 28), mode='bilinear')
    with torch.no_grad():
        out = model(x)
        bb = model.backbone
        if layers == 1:
            f = bb.forward_features(x)
            feat = torch.cat([f['x_norm_clstoken'], f['x_norm_patchtokens'].mean(1)], 1)
        else:
            # Reference built by hand from normed block outputs of the last 4 blocks.
            inter = bb.get_intermediate_layers(x, n=[0, 1, 2, 3], return_class_token=True,
                                               norm=True)
            feat = torch.cat([c for _, c in inter] + [inter[3][0].mean(1)], 1)
        ref = feat @ head['weight'].t() + head['bias']
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_load_head_errors(tmp_path):
    model = DinoLinearClassifier(_tiny(), layers=4)
    torch.save({'weight': torch.zeros(1000, 64), 'bias': torch.zeros(1000)}, tmp_path / 'h.pth')
    with pytest.raises(ValueError, match='layers=4'):
        model.load_head(str(tmp_path / 'h.pth'))
    torch.save({'weight': torch.zeros(1000, 160), 'bias': torch.zeros(1000),
                'extra': torch.zeros(1)}, tmp_path / 'x.pth')
    with pytest.raises(RuntimeError, match='extra'):
        model.load_head(str(tmp_path / 'x.pth'))
    with pytest.raises(ValueError, match='layers must be 1 or 4'):
        DinoLinearClassifier(_tiny(), layers=2)


def test_hub_entries_offline(tmp_path, monkeypatch):
    from dino_mm.hub import classifiers as hub
    monkeypatch.setenv('DINO_MM_WEIGHTS', str(tmp_path))
    assert hub.linear_head_file_name('dinov2_vitb14_reg', 4) == \
        'dinov2_vitb14_reg4_linear4_head.pth'
    assert hub.linear_head_file_name('dinov2_vitg14', 1) == 'dinov2_vitg14_linear_head.pth'
    small = dict(depth=4, embed_dim=32, num_heads=2, img_size=28)
    model = hub.dinov2_vits14_reg_lc(pretrained=False, **small)
    assert model.linear_head.weight.shape == (1000, 160)
    with pytest.raises(FileNotFoundError, match='dinov2_vits14_reg4_linear4_head.pth'):
        hub.dinov2_vits14_reg_lc(weights='IMAGENET1K', **small)
    head = {'weight': torch.randn(1000, 64), 'bias': torch.randn(1000)}
    torch.save(head, tmp_path / 'dinov2_vits14_reg4_linear_head.pth')
    model = hub.dinov2_vits14_reg_lc(layers=1, pretrained=False, weights='IMAGENET1K',
                                     **small)
    assert torch.equal(model.linear_head.weight, head['weight'])
    with pytest.raises(ValueError, match='layers=1'):
        hub.dinov3_vit7b16_lc(layers=4)
    for name in hub.__all__[:-1]:
        assert callable(getattr(hub, name))
