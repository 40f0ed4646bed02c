"""A dataset without samples is an error at build time, never an endless sampler loop.

MMEngine's ``InfiniteSampler`` spins forever at 100 % CPU on an empty dataset
(``while True: yield from randperm(0)``). Every dino_mm dataset must refuse to be built
empty, naming its root / split and what to do; the timeouts turn a regression (a hang)
into a failure.
"""
import importlib.util
import json
import os
import tarfile

import numpy as np
import pytest
from mmengine.runner import Runner

from dino_mm.registry import DATASETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WNIDS = ['n01440764', 'n02102040']


def _empty_imagenet_root(tmp_path):
    """The official layout with its class folders, but no image in them."""
    root = tmp_path / 'imagenet'
    for wnid in WNIDS:
        (root / 'train' / wnid).mkdir(parents=True)
        (root / 'val' / wnid).mkdir(parents=True)
    with open(root / 'labels.txt', 'w') as f:
        f.writelines(f'{w},class {i}\n' for i, w in enumerate(WNIDS))
    return root


def _write_empty_extra(extra, split='TRAIN'):
    """Zero-entry metadata in the official format (what the old tool wrote)."""
    extra.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype([('actual_index', '<u4'), ('class_index', '<u4'), ('class_id', 'U1'),
                      ('class_name', 'U1')])
    np.save(extra / f'entries-{split}.npy', np.zeros(0, dtype=dtype))
    np.save(extra / f'class-ids-{split}.npy', np.zeros(0, dtype='U1'))
    np.save(extra / f'class-names-{split}.npy', np.zeros(0, dtype='U1'))


def _infinite_loader(dataset_cfg):
    return Runner.build_dataloader(
        dict(batch_size=2, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True),
             dataset=dataset_cfg), seed=0)


@pytest.mark.timeout(60)
def test_make_imagenet_extra_refuses_an_empty_split(tmp_path, capsys):
    root = _empty_imagenet_root(tmp_path)
    extra = tmp_path / 'extra'
    tool = os.path.join(REPO, 'tools', 'dataset_converters', 'make_imagenet_extra.py')
    spec = importlib.util.spec_from_file_location('make_imagenet_extra', tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(['--root', str(root), '--extra', str(extra)]) == 1
    err = capsys.readouterr().err
    assert str(root) in err and 'TRAIN' in err and os.path.join(str(root), 'train') in err
    assert 'holds no image' in err
    assert not extra.exists()  # nothing half-written


@pytest.mark.timeout(60)
@pytest.mark.parametrize('split', ['TRAIN', 'VAL'])
def test_imagenet_with_zero_entries_fails_at_build(tmp_path, split):
    root = _empty_imagenet_root(tmp_path)
    extra = root / 'extra'
    _write_empty_extra(extra, split)
    cfg = dict(type='dino_mm.ImageNet', split=split, data_root=str(root), extra=str(extra),
               pipeline=[dict(type='dino_mm.LoadImagePIL')])
    with pytest.raises(ValueError) as err:
        DATASETS.build(cfg)
    text = str(err.value)
    assert str(root) in text and f"split='{split}'" in text, text
    assert f'entries-{split}.npy' in text and 'make_imagenet_extra.py' in text, text
    # the real path of a config: the dataloader with MMEngine's infinite sampler
    with pytest.raises(ValueError, match='has no samples'):
        next(iter(_infinite_loader(cfg)))


@pytest.mark.timeout(60)
def test_lazy_init_fails_before_the_sampler_spins(tmp_path):
    root = _empty_imagenet_root(tmp_path)
    _write_empty_extra(root / 'extra')
    cfg = dict(type='dino_mm.ImageNet', split='TRAIN', data_root=str(root), lazy_init=True)
    with pytest.raises(ValueError, match='has no samples'):
        next(iter(_infinite_loader(cfg)))


@pytest.mark.timeout(60)
def test_empty_subset_is_named(tmp_path, real_images):
    from PIL import Image
    root = tmp_path / 'folder'
    (root / 'a').mkdir(parents=True)
    Image.fromarray(real_images['coffee']).save(root / 'a' / 'x.png')
    for indices in (0, []):
        with pytest.raises(ValueError, match=r'indices=.*has no samples'):
            DATASETS.build(dict(type='dino_mm.ImageFolderDataset', data_root=str(root),
                                indices=indices))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        DATASETS.build(dict(type='dino_mm.ImageFolderDataset', data_root=str(empty)))


@pytest.mark.timeout(60)
def test_imagenet22k_without_members(tmp_path):
    from dino_mm.datasets import dump_imagenet22k_extra
    root = tmp_path / 'in22k'
    root.mkdir()
    with tarfile.open(root / 'n00000001.tar', 'w') as tar:
        info = tarfile.TarInfo('subdir')
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    with pytest.raises(ValueError, match=f'"{root}".*hold no file'):
        dump_imagenet22k_extra(str(root), str(root / 'extra'))
    extra = root / 'extra'
    extra.mkdir()
    dtype = np.dtype([('class_index', '<u4'), ('class_id', 'U9'), ('start_offset', '<u4'),
                      ('end_offset', '<u4'), ('filename', 'U1')])
    np.save(extra / 'entries.npy', np.zeros(0, dtype=dtype))
    np.save(extra / 'class-ids.npy', np.array(['n00000001']))
    with pytest.raises(ValueError) as err:
        DATASETS.build(dict(type='dino_mm.ImageNet22k', data_root=str(root)))
    assert str(root) in str(err.value) and 'entries.npy' in str(err.value)


@pytest.mark.timeout(60)
def test_seeded_infinite_sampler_refuses_empty_dataset():
    from dino_mm.datasets import SeededInfiniteSampler
    with pytest.raises(ValueError, match='no samples'):
        SeededInfiniteSampler([], seed=0)


@pytest.mark.timeout(120)
def test_depth_dataset_empty_subset(tmp_path):
    (tmp_path / 'list.txt').write_text('rgb/a.png depth/a.png 518.8\n')
    with pytest.raises(ValueError) as err:
        DATASETS.build(dict(type='dino_mm.NYUDepthDataset', data_root=str(tmp_path),
                            ann_file='list.txt', indices=0))
    assert str(tmp_path) in str(err.value) and 'indices=0' in str(err.value)


@pytest.mark.timeout(120)
def test_detection_dataset_with_every_image_dropped(tmp_path):
    ann = dict(images=[dict(id=1, file_name='missing.jpg', width=8, height=8)],
               annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 4, 4],
                                 area=16, iscrowd=0)],
               categories=[dict(id=1, name='thing')])
    (tmp_path / 'ann.json').write_text(json.dumps(ann))
    with pytest.raises(ValueError) as err:
        DATASETS.build(dict(type='dino_mm.CheckedCocoDataset', data_root=str(tmp_path),
                            ann_file='ann.json', data_prefix=dict(img='images/'),
                            metainfo=dict(classes=('thing', )), on_invalid='skip',
                            pipeline=[]))
    text = str(err.value)
    assert 'ann.json' in text and 'has no samples' in text, text

