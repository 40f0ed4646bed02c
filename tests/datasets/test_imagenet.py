"""ImageNet (official layout): extra generation tool, loading, DataLoader end to end."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.runner import Runner
from PIL import Image

from dino_mm.datasets import ImageNet
from dino_mm.datasets.transforms import CorruptImageError
from dino_mm.registry import DATASETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WNIDS = ['n01440764', 'n02102040', 'n02979186']
NAMES = ['tench, Tinca tinca', 'English springer', 'cassette player']


def _save(img, path, size=(64, 48)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).resize(size).save(path, format='JPEG')


@pytest.fixture
def imagenet_root(tmp_path, real_images):
    root = tmp_path / 'imagenet'
    photos = list(real_images.values())
    k = 0
    for c, wnid in enumerate(WNIDS):
        for idx in (7, 12, 100)[:2 + (c == 0)]:
            _save(photos[k % len(photos)], str(root / 'train' / wnid / f'{wnid}_{idx}.JPEG'))
            k += 1
        val_idx = c + 1
        _save(photos[c], str(root / 'val' / wnid / f'ILSVRC2012_val_{val_idx:08d}.JPEG'))
    _save(photos[0], str(root / 'test' / 'ILSVRC2012_test_00000003.JPEG'))
    with open(root / 'labels.txt', 'w') as f:
        f.writelines(f'{w},{n}\n' for w, n in zip(WNIDS, NAMES))
    return root


def _make_extra(root, subprocess_cli=False):
    """Run the converter tool: once as a real CLI, otherwise its main() in-process."""
    extra = root / 'extra'
    tool = os.path.join(REPO, 'tools', 'dataset_converters', 'make_imagenet_extra.py')
    args = ['--root', str(root), '--extra', str(extra)]
    if subprocess_cli:
        proc = subprocess.run([sys.executable, tool] + args, cwd=REPO, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
    else:
        spec = importlib.util.spec_from_file_location('make_imagenet_extra', tool)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.main(args) == 0
    return extra


def test_extra_files_and_dataset(imagenet_root):
    extra = _make_extra(imagenet_root, subprocess_cli=True)
    assert sorted(os.listdir(extra)) == sorted(
        [f'entries-{s}.npy' for s in ('TRAIN', 'VAL', 'TEST')] +
        [f'class-{k}-{s}.npy' for k in ('ids', 'names') for s in ('TRAIN', 'VAL')])
    entries = np.load(extra / 'entries-TRAIN.npy')
    assert entries.dtype.names == ('actual_index', 'class_index', 'class_id', 'class_name')
    assert entries.dtype['actual_index'] == np.dtype('<u4')
    # ImageFolder order: sorted classes, sorted file names ('..._100' < '..._12' < '..._7')
    assert entries['actual_index'].tolist() == [100, 12, 7, 12, 7, 12, 7]
    assert entries['class_index'].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert np.load(extra / 'class-names-TRAIN.npy').tolist() == NAMES  # comma kept
    test_entries = np.load(extra / 'entries-TEST.npy')
    assert test_entries['class_index'].tolist() == [2**32 - 1]

    train = DATASETS.build(dict(type='dino_mm.ImageNet', split='TRAIN',
                                data_root=str(imagenet_root), extra=str(extra),
                                pipeline=[dict(type='dino_mm.LoadImagePIL')]))
    assert len(train) == 7 and train.metainfo['classes'] == tuple(NAMES)
    item = train[3]
    assert item['img_path'].endswith(os.path.join('train', WNIDS[1], f'{WNIDS[1]}_12.JPEG'))
    assert item['gt_label'] == 1 and item['img'].mode == 'RGB'
    assert item['img'].size == (64, 48) and item['img_shape'] == (48, 64)
    assert train.get_targets().tolist() == [0, 0, 0, 1, 1, 2, 2]
    val = ImageNet(split='val', data_root=str(imagenet_root), extra=str(extra))
    assert val.get_data_info(2)['img_path'].endswith(
        os.path.join('val', WNIDS[2], 'ILSVRC2012_val_00000003.JPEG'))
    test = ImageNet(split='TEST', data_root=str(imagenet_root), extra=str(extra))
    assert test.get_data_info(0)['img_path'].endswith(
        os.path.join('test', 'ILSVRC2012_test_00000003.JPEG'))
    assert test.get_data_info(0)['gt_label'] == -1 and test.get_targets() is None
    with pytest.raises(ValueError, match='1281167'):
        ImageNet(split='TRAIN', data_root=str(imagenet_root), extra=str(extra),
                 check_length=True)
    subset = ImageNet(split='TRAIN', data_root=str(imagenet_root), extra=str(extra),
                      indices=[5, 6])
    assert len(subset) == 2 and subset.get_data_info(0)['gt_label'] == 2


def test_missing_extra_explains_the_tool(imagenet_root):
    with pytest.raises(FileNotFoundError, match='make_imagenet_extra.py'):
        ImageNet(split='TRAIN', data_root=str(imagenet_root))
    ds = ImageNet(split='TRAIN', data_root=str(imagenet_root), lazy_init=True)
    with pytest.raises(FileNotFoundError, match='entries-TRAIN.npy'):
        len(ds)


def test_corrupt_images_raise_or_are_skipped(imagenet_root):
    extra = _make_extra(imagenet_root)
    bad = imagenet_root / 'train' / WNIDS[0] / f'{WNIDS[0]}_12.JPEG'  # index 1
    bad.write_bytes(b'not a jpeg at all')
    pipeline = [dict(type='dino_mm.LoadImagePIL')]
    strict = ImageNet(data_root=str(imagenet_root), extra=str(extra), pipeline=pipeline)
    with pytest.raises(CorruptImageError, match=f'{WNIDS[0]}_12.JPEG'):
        strict[1]
    lenient = ImageNet(data_root=str(imagenet_root), extra=str(extra), pipeline=pipeline,
                       skip_corrupt=True)
    items = [lenient[i]['img_path'] for i in range(len(lenient))]
    assert lenient.num_skipped == 1
    assert items[1] == items[2]  # replaced by the next readable sample
    os.remove(imagenet_root / 'train' / WNIDS[2] / f'{WNIDS[2]}_7.JPEG')  # missing file
    with pytest.raises(CorruptImageError, match=f'{WNIDS[2]}_7.JPEG'):
        strict[6]


def test_dataloader_end_to_end(imagenet_root):
    extra = _make_extra(imagenet_root)
    loader = Runner.build_dataloader(
        dict(batch_size=3, num_workers=1, persistent_workers=False,
             sampler=dict(type='DefaultSampler', shuffle=True),
             dataset=dict(type='dino_mm.ImageNet', split='TRAIN', data_root=str(imagenet_root),
                          extra=str(extra),
                          pipeline=[dict(type='dino_mm.LoadImagePIL'),
                                    dict(type='dino_mm.DINOMultiCrop', local_crops_number=2,
                                         global_crops_size=56, local_crops_size=28)]),
             collate_fn=dict(type='dino_mm.dino_collate', mask_ratio_min_max=(0.1, 0.5),
                             mask_probability=0.5, patch_size=14)),
        seed=0)
    assert isinstance(loader, torch.utils.data.DataLoader)
    batches = list(loader)
    assert len(batches) == 3  # 7 samples, batch 3, drop_last False
    batch = batches[0]
    assert batch['collated_global_crops'].shape == (6, 3, 56, 56)
    assert batch['collated_local_crops'].shape == (6, 3, 28, 28)
    assert batch['collated_masks'].shape == (6, 16)
    assert batch['n_masked_patches'].item() == batch['collated_masks'].sum().item()
    # real photographs, ImageNet-normalised: roughly zero-mean, unit-scale
    assert -1.5 < batch['collated_global_crops'].mean().item() < 1.5
    assert 0.3 < batch['collated_global_crops'].std().item() < 2.0
