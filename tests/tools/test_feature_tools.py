"""Each feature tool runs end to end on scikit-image photographs with a tiny
random-weight backbone and writes files of the expected shape."""
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from dino_mm.apis import save_png
from dino_mm.apis.extract import load_shard

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY = ['--arch', 'dinov2_vits14', '--override', 'depth=2', 'embed_dim=32', 'num_heads=2']


def _tool(relpath: str):
    spec = importlib.util.spec_from_file_location(
        'tool_' + osp.basename(relpath)[:-3], osp.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def image_files(tmp_path_factory, real_images):
    folder = tmp_path_factory.mktemp('images')
    paths = {}
    for name in ('astronaut', 'chelsea', 'coffee'):
        img = real_images[name]
        small = np.asarray(Image.fromarray(img).resize((img.shape[1] // 4, img.shape[0] // 4)))
        paths[name] = save_png(small, str(folder / f'{name}.png'))
    return paths


def _png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == 'PNG'
        return np.asarray(im)


def test_pca_tool(image_files, tmp_path):
    out = _tool('tools/analysis/pca_features.py').main(
        [image_files['astronaut'], image_files['chelsea'], '--out', str(tmp_path),
         '--size', '56', '--foreground', 'threshold'] + TINY)
    assert len(out) == 2
    a = _png(out[0])
    assert a.shape == (128, 128 * 2 + 4, 3)  # image | PCA map, 4-pixel gap


def test_match_tool_dense_and_sparse(image_files, tmp_path):
    tool = _tool('tools/analysis/match_features.py')
    out = tool.main([image_files['coffee'], image_files['chelsea'], '--out',
                     str(tmp_path / 'dense.png'), '--size', '56'] + TINY)
    assert _png(out).shape == (max(100, 75), 150 + 112 + 4, 3)
    js = str(tmp_path / 'm.json')
    tool.main([image_files['coffee'], image_files['coffee'], '--mode', 'sparse',
               '--keypoints', '20,30', '100,60', '--out', str(tmp_path / 'kp.png'),
               '--save-json', js, '--pixel-features', '--size', '56'])
    with open(js) as f:
        matches = json.load(f)['matches']
    # Raw pixels of an image against itself: every keypoint lands in its own patch.
    assert len(matches) == 2
    for m, (x, y) in zip(matches, [(20, 30), (100, 60)]):
        assert abs(m['b'][0] - x) <= 150 / 4 / 2 + 1 and abs(m['b'][1] - y) <= 100 / 3 / 2 + 1


def test_foreground_tool(image_files, tmp_path):
    mask = np.zeros((128, 128), np.uint8)
    mask[20:90, 40:100] = 255
    mask_path = save_png(np.repeat(mask[..., None], 3, -1), str(tmp_path / 'mask.png'))
    out = _tool('tools/analysis/foreground_segmentation.py').main(
        [image_files['chelsea'], '--train', image_files['astronaut'], mask_path,
         '--out', str(tmp_path), '--size', '56'] + TINY)
    assert _png(out[0]).shape == (75, 112 * 3 + 8, 3)
    prob = np.load(str(tmp_path / 'chelsea_fg.npy'))
    assert prob.shape == (75, 112) and 0 <= prob.min() and prob.max() <= 1


def test_propagation_tool(image_files, tmp_path, real_images):
    frames = []
    base = real_images['coffee'][:96, :96]
    for t in range(3):
        f = base.copy()
        f[20 + 4 * t:50 + 4 * t, 20 + 6 * t:50 + 6 * t] = (255, 0, 0)
        frames.append(save_png(f, str(tmp_path / 'frames' / f'{t:03d}.png')))
    lab = np.zeros((96, 96), np.uint8)
    lab[20:50, 20:50] = 1
    pil = Image.fromarray(lab, mode='P')
    pil.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pil.save(str(tmp_path / 'first.png'))
    out = _tool('tools/analysis/propagate_labels.py').main(
        [str(tmp_path / 'frames'), '--first-labels', str(tmp_path / 'first.png'),
         '--out', str(tmp_path / 'out'), '--pixel-features', '--patch-size', '8',
         '--size', '96'])
    assert len(out) == 3 and _png(out[2]).shape == (96, 196, 3)
    last = np.load(str(tmp_path / 'out' / '002_labels.npy'))
    truth = np.zeros((96, 96), bool)
    truth[28:58, 32:62] = True
    assert ((last == 1) & truth).sum() / ((last == 1) | truth).sum() > 0.6


def test_extract_features_resumable(image_files, tmp_path):
    tool = _tool('tools/extract_features.py')
    folder = osp.dirname(image_files['astronaut'])
    out = str(tmp_path / 'feats')
    args = [folder, '--out', out, '--size', '28', '--shard-size', '2', '--no-progress'] + TINY
    tool.main(args)
    with open(osp.join(out, 'index.json')) as f:
        index = json.load(f)
    assert [osp.basename(p) for p in index['images']] == \
        ['astronaut.png', 'chelsea.png', 'coffee.png']
    assert [s['count'] for s in index['shards']] == [2, 1]
    shard0 = load_shard(out, 0, 'npy')
    assert shard0['cls'].shape == (2, 32) and shard0['patch'].shape == (2, 4, 32)
    # Resume: a finished shard is kept as is; a missing one is recomputed identically;
    # a leftover temporary file never counts as finished.
    first = osp.join(out, 'shard_00000.cls.npy')
    before = os.stat(first).st_mtime_ns
    os.remove(osp.join(out, 'shard_00001.patch.npy'))
    open(osp.join(out, 'shard_00001.patch.npy.tmp123'), 'w').close()
    tool.main(args)
    assert os.stat(first).st_mtime_ns == before
    assert load_shard(out, 1, 'npy')['patch'].shape == (1, 4, 32)
    with pytest.raises(ValueError, match='different run'):
        tool.main(args[:-len(TINY)] + ['--pixel-features'])


@pytest.mark.dist
def test_extract_features_two_processes_safetensors(image_files, tmp_path):
    tool = _tool('tools/extract_features.py')
    folder = osp.dirname(image_files['astronaut'])
    single, multi = str(tmp_path / 'one'), str(tmp_path / 'two')
    common = ['--size', '28', '--shard-size', '1', '--format', 'safetensors',
              '--no-progress', '--pixel-features']
    tool.main([folder, '--out', single] + common)
    tool.main([folder, '--out', multi, '--num-procs', '2'] + common)
    for i in range(3):
        a, b = load_shard(single, i, 'safetensors'), load_shard(multi, i, 'safetensors')
        np.testing.assert_array_equal(a['patch'], b['patch'])
        assert a['patch'].shape == (1, 4, 3 * 14 * 14)


def test_export_tool(tmp_path):
    report = _tool('tools/export.py').main(
        ['--arch', 'dinov3_vits16', '--override', 'depth=2', 'embed_dim=32', 'num_heads=2',
         '--out', str(tmp_path / 'm'), '--example-size', '64', '64', '--check-sizes',
         '64,64', '48,80'])
    assert max(report['torchscript']['max_abs_diff'].values()) <= 1e-4
    assert report['onnx']['dynamic']
    assert osp.isfile(str(tmp_path / 'm.onnx')) and osp.isfile(str(tmp_path / 'm.pt'))
