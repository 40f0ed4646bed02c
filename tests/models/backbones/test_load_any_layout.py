"""Every backbone load path takes official, HF transformers and timm checkpoints.

A random-weight backbone is written in the official layout, converted to the HF and timm
layouts (each proven genuine by loading it strictly into the HF transformers / timm model:
the oracles), and saved as ``.pth`` / ``.safetensors`` files and as a HF model folder
written by transformers itself (``save_pretrained``: ``config.json`` + ``model.safetensors``).
Each is then loaded through the user's entry points -- hub ``weights=``,
``init_cfg=dict(type='Pretrained')`` and the feature tools' ``build_backbone`` (the path of
``backbone_checkpoint``) -- and must give exactly the outputs of the official-layout load.
"""
import pytest
import timm
import torch
import transformers as tf

import dino_mm
from dino_mm.apis import build_backbone
from dino_mm.models.backbones import DinoConvNeXt, DinoVisionTransformer
from dino_mm.models.converters import convert_state_dict, save_state_dict_file

D, L, H = 64, 2, 4
SMALL = dict(depth=L, embed_dim=D, num_heads=H)
# case -> (hub name, extra kwargs, input size)
CASES = {
    'dinov2': ('dinov2_vits14', dict(img_size=56), (56, 70)),
    'dinov2_reg': ('dinov2_vits14_reg', dict(img_size=56), (70, 56)),
    'dinov3': ('dinov3_vits16', {}, (64, 48)),
    'dinov3_swiglu': ('dinov3_vits16plus', {}, (48, 64)),
}


def _randomised(model, seed=0):
    """Official-layout state dict with every float tensor away from its init (the
    DINOv3 k-bias, masked to zero in the official model, is random too)."""
    gen = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if v.is_floating_point() and not k.endswith(('bias_mask', 'periods')):
            v.copy_(torch.randn(v.shape, generator=gen) * 0.2
                    + (1.0 if k.endswith('weight') and v.ndim == 1 else 0.0))
    return sd


def _hf_oracle(case, hf_sd):
    if case.startswith('dinov2'):
        reg = case == 'dinov2_reg'
        cfg = (tf.Dinov2WithRegistersConfig if reg else tf.Dinov2Config)(
            hidden_size=D, num_hidden_layers=L, num_attention_heads=H, image_size=56,
            patch_size=14, mlp_ratio=4, layer_norm_eps=1e-6)
        model = (tf.Dinov2WithRegistersModel if reg else tf.Dinov2Model)(cfg)
    else:
        gated = case == 'dinov3_swiglu'
        hidden = hf_sd['model.layer.0.mlp.up_proj.weight'].shape[0]
        cfg = tf.DINOv3ViTConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                 intermediate_size=hidden, use_gated_mlp=gated,
                                 hidden_act='silu' if gated else 'gelu',
                                 num_register_tokens=4, layer_norm_eps=1e-5)
        model = tf.DINOv3ViTModel(cfg)
    model.load_state_dict(hf_sd, strict=True)  # the converted layout is genuine HF
    return model.eval()


def _timm_oracle(case, timm_sd):
    if case.startswith('dinov2'):
        name = 'vit_small_patch14_reg4_dinov2' if case == 'dinov2_reg' else \
            'vit_small_patch14_dinov2'
        model = timm.create_model(name, img_size=56, num_classes=0, **SMALL)
    else:
        name = 'vit_small_patch16_dinov3_qkvb' if case == 'dinov3' else \
            'vit_small_plus_patch16_dinov3_qkvb'
        model = timm.create_model(name, num_classes=0, dynamic_img_size=True, **SMALL)
    model.load_state_dict(timm_sd, strict=True)  # the converted layout is genuine timm
    return model


@pytest.fixture(scope='module', params=list(CASES))
def checkpoints(request, tmp_path_factory):
    case = request.param
    name, extra, size = CASES[case]
    root = tmp_path_factory.mktemp(case)
    ref = getattr(dino_mm.hub, name)(pretrained=False, **SMALL, **extra)
    sd = _randomised(ref)
    ref.load_state_dict(sd)
    files = {'official': root / 'official.pth'}
    torch.save(sd, files['official'])

    hf_sd = convert_state_dict(sd, to='hf')
    hf_model = _hf_oracle(case, hf_sd)
    files['hf_file'] = root / 'hf.safetensors'
    save_state_dict_file(hf_sd, str(files['hf_file']))
    files['hf_folder'] = root / 'hf_folder'
    hf_model.save_pretrained(str(files['hf_folder']))  # config.json + model.safetensors
    assert (files['hf_folder'] / 'config.json').is_file()

    timm_sd = convert_state_dict(sd, to='timm')
    _timm_oracle(case, timm_sd)
    files['timm_pth'] = root / 'timm.pth'
    torch.save(timm_sd, files['timm_pth'])
    files['timm_safetensors'] = root / 'timm.safetensors'
    save_state_dict_file(timm_sd, str(files['timm_safetensors']))

    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.forward_features(x)
    return dict(case=case, name=name, extra=extra, files=files, x=x, want=want)


def _assert_same(model, ck, source):
    with torch.no_grad():
        got = model.forward_features(ck['x'])
    assert set(got) == set(ck['want'])
    for key, want in ck['want'].items():
        if isinstance(want, torch.Tensor):
            assert torch.equal(got[key], want), (ck['case'], source, key)


SOURCES = ['official', 'hf_file', 'hf_folder', 'timm_pth', 'timm_safetensors']


@pytest.mark.parametrize('source', SOURCES)
def test_hub_weights_any_layout(checkpoints, source):
    ck = checkpoints
    model = getattr(dino_mm.hub, ck['name'])(weights=str(ck['files'][source]), **SMALL,
                                             **ck['extra'])
    _assert_same(model, ck, source)


@pytest.mark.parametrize('source', SOURCES)
def test_init_cfg_pretrained_any_layout(checkpoints, source):
    ck = checkpoints
    model = DinoVisionTransformer(
        ck['name'], **SMALL, **ck['extra'],
        init_cfg=dict(type='Pretrained', checkpoint=str(ck['files'][source])))
    model.init_weights()
    _assert_same(model.eval(), ck, source)


def test_backbone_checkpoint_path_takes_hf_folder(checkpoints):
    # build_backbone is what the feature tools and export use; kNN / logreg
    # ``backbone_checkpoint`` goes through the same load_checkpoint_strict.
    ck = checkpoints
    model = build_backbone(ck['name'], str(ck['files']['hf_folder']), **SMALL, **ck['extra'])
    _assert_same(model, ck, 'hf_folder')


def test_mismatch_message_names_the_layout(tmp_path):
    src = dino_mm.hub.dinov2_vits14(pretrained=False, **SMALL, img_size=56)
    path = tmp_path / 'hf.safetensors'
    save_state_dict_file(convert_state_dict(src.state_dict(), to='hf'), str(path))
    with pytest.raises(RuntimeError) as err:
        dino_mm.hub.dinov2_vits14(weights=str(path), depth=1, embed_dim=D, num_heads=H,
                                  img_size=56)
    text = str(err.value)
    assert str(path) in text and 'read as the hf layout' in text
    assert 'unexpected keys (14)' in text and 'blocks.1.attn.qkv.weight' in text


def _convnext():
    return DinoConvNeXt(depths=[1, 1, 2, 1], dims=[16, 24, 32, 48]).eval()


@pytest.mark.parametrize('layout', ['hf', 'timm'])
def test_convnext_hub_and_init_cfg_any_layout(tmp_path, layout):
    ref = _convnext()
    sd = _randomised(ref, seed=5)
    ref.load_state_dict(sd)
    path = tmp_path / f'{layout}.safetensors'
    save_state_dict_file(convert_state_dict(sd, to=layout), str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
    by_hub = dino_mm.hub.dinov3_convnext_tiny(weights=str(path), depths=[1, 1, 2, 1],
                                              dims=[16, 24, 32, 48]).eval()
    by_cfg = DinoConvNeXt(depths=[1, 1, 2, 1], dims=[16, 24, 32, 48],
                          init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    by_cfg.init_weights()
    with torch.no_grad():
        assert torch.equal(by_hub(x), want)
        assert torch.equal(by_cfg.eval()(x), want)
