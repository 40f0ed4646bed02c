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
