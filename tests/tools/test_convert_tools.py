"""tools/convert/convert_checkpoint.py and pretrain_to_backbone.py, run as subprocesses."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_mm.models.backbones.vision_transformer import DinoVisionTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERT = os.path.join(ROOT, 'tools', 'convert', 'convert_checkpoint.py')
EXTRACT = os.path.join(ROOT, 'tools', 'convert', 'pretrain_to_backbone.py')
D, L, H = 64, 2, 4  # head dim 16: the RoPE periods must come from config.json, not the default


def _run(*args):
    """Run a tool as a subprocess (the way users call it)."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _call(capsys, tool, *args):
    """Run a tool's ``main`` in-process: a fresh interpreter costs ~5 s of imports, so only
    one call per tool goes through :func:`_run`."""
    spec = importlib.util.spec_from_file_location(os.path.basename(tool)[:-3], tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def _vit(**kw):
    return DinoVisionTransformer(arch='dinov3_vits16', embed_dim=D, depth=L, num_heads=H,
                                 **kw).eval()


def _randomised(model, seed):
    gen = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if v.is_floating_point() and not k.endswith(('bias_mask', 'periods')):
            v.add_(torch.randn(v.shape, generator=gen) * 0.1)
        if k.endswith('qkv.bias'):
            v[D:2 * D] = 0  # masked third, dropped by the HF layout
    return sd


def test_convert_official_hf_official_and_hf_directory(tmp_path, real_images, capsys):
    sd = _randomised(_vit(), seed=0)
    src = tmp_path / 'official.pth'
    torch.save(sd, src)
    hf_file = tmp_path / 'hf.safetensors'
    res = _call(capsys, CONVERT, src, hf_file, '--to', 'hf')
    assert res.returncode == 0, res.stderr
    assert 'dinov3_vit (official' in res.stdout and hf_file.is_file()
    assert not (tmp_path / 'hf.safetensors.tmp').exists()

    # An HF model directory: config.json gives the head dim for the RoPE periods.
    hf_dir = tmp_path / 'hf_model'
    hf_dir.mkdir()
    os.replace(hf_file, hf_dir / 'model.safetensors')
    (hf_dir / 'config.json').write_text(json.dumps(
        {'model_type': 'dinov3_vit', 'hidden_size': D, 'num_attention_heads': H,
         'rope_theta': 100.0}))
    back = tmp_path / 'back.pth'
    res = _run(CONVERT, hf_dir, back, '--from', 'hf', '--to', 'official')
    assert res.returncode == 0, res.stderr
    restored = torch.load(back, weights_only=True)
    assert set(restored) == set(sd)
    for k in sd:
        assert torch.equal(restored[k], sd[k]), k
    model = _vit()
    model.load_state_dict(restored, strict=True)
    img = torch.from_numpy(np.ascontiguousarray(real_images['chelsea'])).permute(2, 0, 1)
    x = F.interpolate(img[None].float() / 255, size=(64, 96), mode='bilinear')
    ref = _vit()
    ref.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)


def test_convert_rejects_unknown_layout(tmp_path, capsys):
    src = tmp_path / 'weird.pth'
    torch.save({'encoder.conv.weight': torch.zeros(2, 2)}, src)
    dst = tmp_path / 'out.pth'
    res = _call(capsys, CONVERT, src, dst)
    assert res.returncode == 2
    assert 'unknown checkpoint layout' in res.stderr and 'weird.pth' in res.stderr
    assert not dst.exists() and not (tmp_path / 'out.pth.tmp').exists()
    res = _call(capsys, CONVERT, tmp_path / 'missing.pth', dst)
    assert res.returncode == 2 and 'does not exist' in res.stderr


def test_pretrain_to_backbone(tmp_path, capsys):
    student = _randomised(_vit(), seed=1)
    teacher = _randomised(_vit(), seed=2)
    state = {f'student.backbone.{k}': v for k, v in student.items()}
    # FSDP-chunked teacher (2 chunks of 1 block): blocks.{c}.{i}
    for k, v in teacher.items():
        if k.startswith('blocks.'):
            i = k.split('.')[1]
            k = f'blocks.{i}.{k[len("blocks."):]}'
        state[f'teacher.backbone.{k}'] = v
    state['teacher.dino_head.mlp.0.weight'] = torch.zeros(8, D)
    state['student.dino_head.mlp.0.weight'] = torch.zeros(8, D)
    ckpt = {'meta': {'iter': 10, 'seed': 0}, 'state_dict': state}
    src = tmp_path / 'iter_10.pth'
    torch.save(ckpt, src)

    dst = tmp_path / 'teacher.pth'
    res = _call(capsys, EXTRACT, src, dst, '--arch', 'dinov3_vits16_tiny_check')
    assert res.returncode == 2 and 'dinov3_vits16_tiny_check' in res.stderr  # unknown arch
    res = _run(EXTRACT, src, dst)
    assert res.returncode == 0, res.stderr
    out = torch.load(dst, weights_only=True)
    assert set(out) == set(teacher)
    assert all(torch.equal(out[k], teacher[k]) for k in teacher)

    res = _call(capsys, EXTRACT, src, tmp_path / 'student.pth', '--model', 'student')
    assert res.returncode == 0, res.stderr
    out = torch.load(tmp_path / 'student.pth', weights_only=True)
    assert all(torch.equal(out[k], student[k]) for k in student)

    # official training layout {'teacher': {'backbone.*', 'dino_head.*'}}
    official = {'teacher': {**{f'backbone.{k}': v for k, v in teacher.items()},
                            'dino_head.last_layer.weight_g': torch.ones(8, 1)}}
    torch.save(official, tmp_path / 'teacher_checkpoint.pth')
    res = _call(capsys, EXTRACT, tmp_path / 'teacher_checkpoint.pth',
                tmp_path / 't.safetensors')
    assert res.returncode == 0, res.stderr

    # a plain backbone file is not a pretraining checkpoint
    torch.save(teacher, tmp_path / 'plain.pth')
    res = _call(capsys, EXTRACT, tmp_path / 'plain.pth', tmp_path / 'x.pth')
    assert res.returncode == 2 and 'teacher.backbone.' in res.stderr


# name -> (dino_mm arch, extra kwargs, input size, HF class the folder must load as)
HF_EXPORT_CASES = {
    'dinov2': ('dinov2_vits14', dict(img_size=56), (56, 56), 'Dinov2Model'),
    'dinov2_reg': ('dinov2_vits14_reg', dict(img_size=56), (56, 56),
                   'Dinov2WithRegistersModel'),
    'dinov2_swiglu': ('dinov2_vitg14', dict(img_size=56), (56, 56), 'Dinov2Model'),
    'dinov3': ('dinov3_vits16', {}, (64, 48), 'DINOv3ViTModel'),
    'dinov3_swiglu': ('dinov3_vits16plus', {}, (48, 64), 'DINOv3ViTModel'),
}


@pytest.mark.parametrize('case', list(HF_EXPORT_CASES))
def test_convert_to_hf_writes_a_folder_transformers_loads(tmp_path, capsys, case):
    """``--to hf`` writes config.json: ``from_pretrained(out)`` rebuilds the model with no
    missing or unexpected weights and gives the outputs of a HF model built by hand."""
    tf = pytest.importorskip('transformers')
    arch, extra, size, cls_name = HF_EXPORT_CASES[case]
    ref = DinoVisionTransformer(arch=arch, embed_dim=D, depth=L, num_heads=H, **extra).eval()
    sd = _randomised(ref, seed=7)
    if not arch.startswith('dinov3'):
        sd['blocks.0.attn.qkv.bias'][D:2 * D].normal_()  # DINOv2 keeps its k-bias
    ref.load_state_dict(sd)
    src = tmp_path / 'official.pth'
    torch.save(sd, src)
    out = tmp_path / 'hf_out'
    res = _call(capsys, CONVERT, src, out, '--to', 'hf', '--head-dim', D // H)
    assert res.returncode == 0, res.stderr
    assert (out / 'config.json').is_file() and (out / 'model.safetensors').is_file()
    assert 'from_pretrained' in res.stdout

    model, info = tf.AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert type(model).__name__ == cls_name
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    # Oracle: the same tensors in a HF model configured by hand.
    from dino_mm.models.converters import convert_state_dict
    hf_sd = convert_state_dict(sd, to='hf')
    if arch.startswith('dinov2'):
        cfg_cls = tf.Dinov2WithRegistersConfig if case == 'dinov2_reg' else tf.Dinov2Config
        cfg = cfg_cls(hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                      image_size=56, patch_size=14, mlp_ratio=4, layer_norm_eps=1e-6,
                      use_swiglu_ffn=case == 'dinov2_swiglu')
        by_hand = getattr(tf, cls_name)(cfg)
    else:
        gated = case == 'dinov3_swiglu'
        cfg = tf.DINOv3ViTConfig(
            hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
            intermediate_size=hf_sd['model.layer.0.mlp.up_proj.weight'].shape[0],
            use_gated_mlp=gated, hidden_act='silu' if gated else 'gelu',
            num_register_tokens=4, layer_norm_eps=1e-5)
        by_hand = tf.DINOv3ViTModel(cfg)
    by_hand.load_state_dict(hf_sd, strict=True)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.eval()(pixel_values=x).last_hidden_state
        want = by_hand.eval()(pixel_values=x).last_hidden_state
        mine = ref.forward_features(x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    n_patch = mine['x_norm_patchtokens'].shape[1]
    torch.testing.assert_close(got[:, 0], mine['x_norm_clstoken'], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[:, -n_patch:], mine['x_norm_patchtokens'], atol=1e-4,
                               rtol=0)
    # ... and the folder loads back into dino_mm exactly (hub weights=).
    import dino_mm
    back = getattr(dino_mm.hub, arch)(weights=str(out), embed_dim=D, depth=L, num_heads=H,
                                      **extra)
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(x)['x_norm_patchtokens'],
                                   mine['x_norm_patchtokens'], atol=0, rtol=0)


def test_convert_vit7b_like_hf_back_to_official_keeps_local_cls_norm(tmp_path, real_images,
                                                                      capsys):
    """official -> HF folder -> official for a model with the 7B's options: the HF file has
    no (training-only) ``local_cls_norm``; ``--local-cls-norm`` refills it from ``norm``, the
    result loads strictly and gives the original eval outputs."""
    def vit7b_like():
        return DinoVisionTransformer(arch='dinov3_vit7b16', embed_dim=D, depth=L,
                                     num_heads=H).eval()

    ref = vit7b_like()
    sd = _randomised(ref, seed=11)
    ref.load_state_dict(sd)
    src = tmp_path / 'official.pth'
    torch.save(sd, src)
    hf_dir = tmp_path / 'hf_7b'
    res = _call(capsys, CONVERT, src, hf_dir, '--to', 'hf', '--head-dim', D // H)
    assert res.returncode == 0, res.stderr
    assert 'local_cls_norm' in res.stdout and 'left out' in res.stdout
    from safetensors.torch import load_file
    assert not any('local_cls_norm' in k for k in load_file(hf_dir / 'model.safetensors'))

    # Without the option a D=64 model gets no local_cls_norm, and the tool says what to pass.
    plain = tmp_path / 'plain.pth'
    res = _call(capsys, CONVERT, hf_dir, plain, '--to', 'official')
    assert res.returncode == 0, res.stderr
    assert '--local-cls-norm' in res.stdout
    assert 'local_cls_norm.weight' not in torch.load(plain, weights_only=True)

    back = tmp_path / 'back.pth'
    res = _run(CONVERT, hf_dir, back, '--to', 'official', '--local-cls-norm')
    assert res.returncode == 0, res.stderr
    assert 'copy of the final norm' in res.stdout
    restored = torch.load(back, weights_only=True)
    assert set(restored) == set(sd)
    for k in sd:
        expect = sd['norm.' + k.split('.')[-1]] if k.startswith('local_cls_norm.') else sd[k]
        assert torch.equal(restored[k], expect), k
    model = vit7b_like()
    model.load_state_dict(restored, strict=True)
    img = torch.from_numpy(np.ascontiguousarray(real_images['chelsea'])).permute(2, 0, 1)
    x = F.interpolate(img[None].float() / 255, size=(64, 96), mode='bilinear')
    with torch.no_grad():
        got, want = model.forward_features(x), ref.forward_features(x)
    for key in ('x_norm_clstoken', 'x_storage_tokens', 'x_norm_patchtokens'):
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0, msg=key)


def test_convert_hf_and_timm_7b_width_to_official_loads_strictly(tmp_path, capsys):
    """Real-width (4096, 32 heads) HF and timm DINOv3 7B files, cut to 0 blocks: ``--to
    official`` adds ``local_cls_norm`` by default and the file loads strictly into
    ``dinov3_vit7b16``, with the HF / timm model's outputs."""
    tf = pytest.importorskip('transformers')
    timm = pytest.importorskip('timm')
    hf = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(
        hidden_size=4096, num_hidden_layers=0, num_attention_heads=32, intermediate_size=64,
        num_register_tokens=4, layer_norm_eps=1e-5, query_bias=False,
        value_bias=False)).eval()
    tm = timm.create_model('vit_7b_patch16_dinov3', depth=0, num_classes=0).eval()
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    for name, other in (('hf', hf), ('timm', tm)):
        other_sd = _randomised(other, seed=5)
        other.load_state_dict(other_sd)
        src = tmp_path / f'{name}_7b.pth'
        torch.save(other_sd, src)
        dst = tmp_path / f'{name}_7b_official.pth'
        res = _call(capsys, CONVERT, src, dst, '--to', 'official')
        assert res.returncode == 0, res.stderr
        model = DinoVisionTransformer(arch='dinov3_vit7b16', depth=0).eval()
        model.load_state_dict(torch.load(dst, weights_only=True), strict=True)
        assert 'copy of the final norm' in res.stdout, res.stdout
        with torch.no_grad():
            mine = model.forward_features(x)
            tokens = (other(pixel_values=x).last_hidden_state if name == 'hf'
                      else other.forward_features(x))
        torch.testing.assert_close(mine['x_norm_clstoken'], tokens[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(mine['x_norm_patchtokens'], tokens[:, 5:], atol=1e-5,
                                   rtol=0)
        res = _call(capsys, CONVERT, src, tmp_path / 'no_lcn.pth', '--to', 'official',
                    '--no-local-cls-norm')
        assert res.returncode == 0, res.stderr
        assert 'local_cls_norm.weight' not in torch.load(tmp_path / 'no_lcn.pth',
                                                         weights_only=True)
    # A DINOv2 file has no such norm: asking for one is an error naming the option.
    v2 = tmp_path / 'v2.pth'
    torch.save(DinoVisionTransformer(arch='dinov2_vits14', img_size=28, embed_dim=D, depth=1,
                                     num_heads=H).state_dict(), v2)
    res = _call(capsys, CONVERT, v2, tmp_path / 'v2_hf.pth', '--to', 'hf', '--local-cls-norm')
    assert res.returncode == 2 and '--local-cls-norm' in res.stderr, res.stderr
