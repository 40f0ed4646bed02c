"""``--precision`` of tools/extract_features.py and the tools/analysis feature tools."""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from dino_mm.apis import save_png
from dino_mm.apis.extract import load_shard

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY = ['--arch', 'dinov2_vits14', '--override', 'depth=2', 'embed_dim=32', 'num_heads=2']


def _tool(relpath: str):
    spec = importlib.util.spec_from_file_location(
        'precision_tool_' + osp.basename(relpath)[:-3], osp.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def folder(tmp_path_factory, real_images):
    out = tmp_path_factory.mktemp('images')
    for name in ('astronaut', 'chelsea'):
        img = real_images[name]
        save_png(np.asarray(Image.fromarray(img).resize((64, 64))), str(out / f'{name}.png'))
    return str(out)


def test_extract_features_records_and_keeps_the_precision(folder, tmp_path, monkeypatch):
    tool = _tool('tools/extract_features.py')
    common = ['--size', '28', '--no-progress'] + TINY
    shards = {}
    for precision in ('fp32', 'bf16'):
        out = str(tmp_path / precision)
        torch.manual_seed(0)  # the same random backbone both times
        tool.main([folder, '--out', out, '--precision', precision] + common)
        with open(osp.join(out, 'index.json')) as f:
            assert json.load(f)['settings']['precision'] == precision
        shards[precision] = load_shard(out, 0, 'npy')
        assert shards[precision]['cls'].dtype == np.float32  # stored as fp32 either way
    for kind in ('cls', 'patch'):
        a, b = shards['fp32'][kind], shards['bf16'][kind]
        assert not np.array_equal(a, b)  # bf16 really ran ...
        np.testing.assert_allclose(b, a, atol=0.1 * np.abs(a).max())  # ... and is close
    # A rerun in the same folder with another precision would mix shards: refused.
    with pytest.raises(ValueError, match=r"different run \(settings \['precision'\]"):
        tool.main([folder, '--out', str(tmp_path / 'fp32'), '--precision', 'bf16'] + common)
    # 'auto' is recorded as what it resolved to (fp32 on a CPU without native bf16).
    import dino_mm.utils.precision as precision
    monkeypatch.setattr(precision, 'cpu_bf16_flags', lambda: ())
    tool.main([folder, '--out', str(tmp_path / 'auto')] + common)
    with open(osp.join(str(tmp_path / 'auto'), 'index.json')) as f:
        assert json.load(f)['settings']['precision'] == 'fp32'


@pytest.mark.parametrize('precision,want', [('bf16', torch.bfloat16), ('fp32', torch.float32)])
def test_analysis_tools_build_their_extractor_in_the_given_precision(folder, precision,
                                                                     want):
    from dino_mm.apis.cli import build_extractor
    pca = _tool('tools/analysis/pca_features.py')
    args = pca.parse_args([osp.join(folder, 'astronaut.png'), '--out', 'unused', '--size',
                           '56', '--precision', precision] + TINY)
    extractor = build_extractor(args)
    assert extractor.precision == precision
    seen = []
    extractor.model.blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    item = extractor.image_features(osp.join(folder, 'astronaut.png'), 56)
    assert seen == [want] and item.features.dtype == torch.float32


def test_precision_flag_rejects_fp16_on_cpu(folder, tmp_path):
    tool = _tool('tools/extract_features.py')
    with pytest.raises(ValueError, match="'fp16' is for CUDA; on CPU use 'bf16'"):
        tool.main([folder, '--out', str(tmp_path / 'x'), '--precision', 'fp16', '--size',
                   '28', '--no-progress'] + TINY)
