"""Generated leaf configs equal their generator's output, and the "+ms" leaves use 640 px.

``configs/{segmentation,depth}/generate_configs.py`` write the leaves; a hand edit of a
leaf, a generator change without a re-run, or a stale leaf the generator no longer writes
(e.g. the old 512 px ms leaves) fails here.
"""
import glob
import importlib.util
import os
import os.path as osp

import pytest
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
GENERATORS = ['configs/segmentation/generate_configs.py', 'configs/depth/generate_configs.py']


def _load(rel):
    spec = importlib.util.spec_from_file_location(f'gen_{abs(hash(rel))}', osp.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_tree(rel, out):
    """Run the generator with its output folder moved to ``out``; {relative path: text}."""
    module = _load(rel)
    module.HERE = str(out)
    module.main()
    return {osp.relpath(p, out): open(p).read()
            for p in glob.glob(osp.join(out, '**', '*.py'), recursive=True)}


@pytest.mark.parametrize('rel', GENERATORS)
def test_committed_leaves_equal_the_generator_output(rel, tmp_path, capsys):
    generated = _generated_tree(rel, tmp_path)
    assert generated, f'{rel} wrote nothing'
    here = osp.dirname(osp.join(ROOT, rel))
    committed = {osp.relpath(p, here): open(p).read()
                 for p in glob.glob(osp.join(here, '**', '*.py'), recursive=True)
                 if osp.basename(p) != 'generate_configs.py'}
    stale = sorted(set(committed) - set(generated))
    missing = sorted(set(generated) - set(committed))
    differ = sorted(k for k in set(generated) & set(committed) if generated[k] != committed[k])
    assert not (stale or missing or differ), (
        f'{rel}: re-run `python {rel}` and commit its output.\n'
        f'  leaves it does not write (delete them): {stale}\n'
        f'  leaves missing: {missing}\n  leaves that differ: {differ}')


MS_LEAVES = sorted(glob.glob(osp.join(ROOT, 'configs/segmentation/*/*_ms_*.py')))


def test_every_ms_leaf_is_found():
    assert len(MS_LEAVES) == 20  # 4 DINOv2 + 6 DINOv3 sizes x ADE20K / VOC


@pytest.mark.parametrize('path', MS_LEAVES, ids=osp.basename)
def test_ms_leaves_follow_the_official_640_recipe(path):
    cfg = Config.fromfile(path)
    assert path.endswith('-640x640.py')
    train = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResize']['scale'] == (99999999, 640)
    assert tuple(train['RandomResize']['ratio_range']) == (1.0, 3.0)
    assert tuple(train['RandomCrop']['crop_size']) == (640, 640)
    test = {t['type']: t for t in cfg.test_dataloader.dataset.pipeline}
    assert test['Resize']['scale'] == (99999999, 640)
    assert tuple(cfg.model.data_preprocessor.size) == (640, 640)
    assert tuple(cfg.model.test_cfg.crop_size) == (640, 640)
    assert list(cfg.model.test_cfg.img_ratios) == [1.0, 1.32, 1.73, 2.28, 3.0]
    assert cfg.model.test_cfg.flip is True
    # the linear leaf of the same backbone and dataset keeps the 512 px protocol
    linear = Config.fromfile(path.replace('_ms_', '_linear_').replace('640x640', '512x512'))
    lin_train = {t['type']: t for t in linear.train_dataloader.dataset.pipeline}
    assert tuple(lin_train['RandomCrop']['crop_size']) == (512, 512)
    assert lin_train['RandomResize']['scale'] == (2048, 512)
