"""CocoCaptionsDataset (COCO-Captions layout) and the captioned digits converter."""
import importlib.util
import json
import os
import os.path as osp
import random

import numpy as np
import pytest
from PIL import Image

from dino_mm.datasets import CocoCaptionsDataset
from dino_mm.registry import DATASETS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONVERTERS = osp.join(REPO, 'tools', 'dataset_converters')
ANN = osp.join('annotations', 'captions_train2017.json')
CAPTIONS = {  # image id -> (file name, captions); annotations are interleaved on disk
    1: ('a.png', ['a cat on a mat', 'a sleeping cat', 'an orange cat', 'cat, mat', 'a pet']),
    2: ('b.png', ['  a red car  ']),
    3: ('c.png', ['two dogs', 'dogs playing']),
}


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(CONVERTERS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root, images, annotations, split='train', write_images=True):
    """A COCO-Captions json under ``root/annotations`` and the PNGs of ``images``."""
    folder = root / f'{split}2017'
    folder.mkdir(parents=True, exist_ok=True)
    if write_images:
        rng = np.random.RandomState(0)
        for img in images:
            Image.fromarray(rng.randint(0, 256, (24, 20, 3), dtype=np.uint8)).save(
                folder / img['file_name'])
    (root / 'annotations').mkdir(exist_ok=True)
    path = root / 'annotations' / f'captions_{split}2017.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations)))
    return str(path)


def _captions_json():
    images = [dict(id=i, file_name=f, height=24, width=20) for i, (f, _) in CAPTIONS.items()]
    # round-robin over the images: not grouped by image, each image's captions in order
    pairs = sorted(((j, i, c) for i, (_, caps) in CAPTIONS.items() for j, c in enumerate(caps)))
    annotations = [dict(id=100 + k, image_id=i, caption=c) for k, (_, i, c) in enumerate(pairs)]
    return images, annotations


@pytest.fixture
def coco(tmp_path):
    images, annotations = _captions_json()
    _write(tmp_path, images, annotations)
    _write(tmp_path, images[1:2], [dict(id=1, image_id=2, caption='a blue car')], split='val')
    return tmp_path


def test_samples_and_captions(coco):
    ds = CocoCaptionsDataset(data_root=str(coco), caption_sampling='first')
    assert len(ds) == 3
    for idx, (image_id, (name, caps)) in enumerate(CAPTIONS.items()):
        info = ds.get_data_info(idx)
        assert info['img_path'] == osp.join(str(coco), 'train2017', name)
        assert info['image_id'] == image_id and info['captions'] == [c.strip() for c in caps]
        assert info['caption'] == caps[0].strip() and info['caption_idx'] == 0
    val = CocoCaptionsDataset(data_root=str(coco), ann_file='annotations/captions_val2017.json',
                              data_prefix=dict(img_path='val2017'))
    assert len(val) == 1 and val.get_data_info(0)['caption'] == 'a blue car'
    assert val.get_data_info(0)['img_path'] == osp.join(str(coco), 'val2017', 'b.png')


@pytest.mark.parametrize('serialize_data', [True, False])
def test_random_first_all(coco, serialize_data):
    kw = dict(data_root=str(coco), serialize_data=serialize_data)
    ds = CocoCaptionsDataset(caption_sampling='random', **kw)
    random.seed(1)
    draws = [ds[0]['caption'] for _ in range(40)]  # through prepare_data (empty pipeline)
    assert set(draws) == set(CAPTIONS[1][1])  # re-drawn at every fetch, all of them reached
    assert {ds[1]['caption'] for _ in range(5)} == {'a red car'}
    random.seed(1)
    assert [ds.get_data_info(0)['caption'] for _ in range(40)] == draws  # python `random`
    first = CocoCaptionsDataset(caption_sampling='first', **kw)
    assert {first[0]['caption'] for _ in range(10)} == {'a cat on a mat'}
    every = CocoCaptionsDataset(caption_sampling='all', **kw)
    assert len(every) == 8
    pairs = [(every[i]['image_id'], every[i]['caption']) for i in range(len(every))]
    assert pairs == [(i, c.strip()) for i, (_, caps) in CAPTIONS.items() for c in caps]
    assert [every[i]['caption_idx'] for i in range(5)] == [0, 1, 2, 3, 4]
    assert every[5]['captions'] == ['a red car'] and every[7]['img_path'].endswith('c.png')


def test_mmpretrain_pipeline_from_config(coco):
    pipeline = [dict(type='mmpretrain.LoadImageFromFile'),
                dict(type='mmpretrain.RandomResizedCrop', scale=16),
                dict(type='mmpretrain.PackInputs', meta_keys=('img_path', 'caption'))]
    ds = DATASETS.build(dict(type='dino_mm.CocoCaptionsDataset', data_root=str(coco),
                             ann_file=ANN, data_prefix=dict(img_path='train2017'),
                             pipeline=pipeline))
    assert isinstance(ds, CocoCaptionsDataset)
    for idx in range(len(ds)):
        out = ds[idx]
        assert tuple(out['inputs'].shape) == (3, 16, 16)
        sample = out['data_samples']
        assert isinstance(sample.caption, str)
        assert sample.caption in [c.strip() for c in CAPTIONS[idx + 1][1]]
        assert sample.img_path.endswith(CAPTIONS[idx + 1][0])


def _build(root, **kw):
    return CocoCaptionsDataset(data_root=str(root), **kw)


def test_missing_or_malformed_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        _build(tmp_path)
    assert osp.join(str(tmp_path), ANN) in str(err.value)
    assert 'make_digits_captions.py' in str(err.value) and 'ann_file' in str(err.value)
    (tmp_path / 'annotations').mkdir()
    path = tmp_path / ANN
    path.write_text(json.dumps(dict(annotations=[])))
    with pytest.raises(ValueError, match=r"no 'images' list") as err:
        _build(tmp_path)
    assert str(path) in str(err.value)
    path.write_text(json.dumps(dict(images=[])))
    with pytest.raises(ValueError, match=r"no 'annotations' list"):
        _build(tmp_path)
    bbox = dict(id=5, image_id=1, bbox=[0, 0, 4, 4], category_id=1)  # an instances file
    path.write_text(json.dumps(dict(images=[dict(id=1, file_name='a.png')], annotations=[bbox])))
    with pytest.raises(ValueError, match=r'annotation id 5 .*lacks "image_id" or "caption"'):
        _build(tmp_path)
    path.write_text(json.dumps(dict(images=[dict(id=1)], annotations=[])))
    with pytest.raises(ValueError, match=r'image entry .*lacks "id" or "file_name"'):
        _build(tmp_path)
    twice = [dict(id=1, file_name='a.png'), dict(id=1, file_name='b.png')]
    path.write_text(json.dumps(dict(images=twice, annotations=[])))
    with pytest.raises(ValueError, match='image id 1 twice'):
        _build(tmp_path)
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match='not valid JSON') as err:
        _build(tmp_path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        _build(tmp_path / 'nowhere')
    with pytest.raises(ValueError, match='caption_sampling'):
        _build(tmp_path, caption_sampling='longest')


def test_bad_annotations(tmp_path):
    images, annotations = _captions_json()
    path = _write(tmp_path, images, annotations + [dict(id=7, image_id=99, caption='x')])
    with pytest.raises(ValueError) as err:
        _build(tmp_path)
    text = str(err.value)
    assert path in text and 'annotation id 7' in text and 'image_id 99' in text, text

    _write(tmp_path, images, annotations + [dict(id=8, image_id=2, caption=' \n ')])
    with pytest.raises(ValueError) as err:
        _build(tmp_path)
    text = str(err.value)
    assert path in text and 'annotation id 8' in text and '"b.png"' in text, text
    assert 'empty caption' in text

    many = images + [dict(id=10 + k, file_name=f'x{k}.png') for k in range(7)]
    _write(tmp_path, many, annotations)
    with pytest.raises(ValueError) as err:
        _build(tmp_path)
    text = str(err.value)
    assert path in text and '7 of 10 images have no caption' in text, text
    assert '[10, 11, 12, 13, 14] and 2 more' in text, text


def test_missing_image_files(tmp_path):
    images, annotations = _captions_json()
    extra = [dict(id=20 + k, file_name=f'gone{k}.png') for k in range(6)]
    _write(tmp_path, images, annotations)  # a.png, b.png, c.png exist
    path = _write(tmp_path, images + extra, annotations + [
        dict(id=200 + k, image_id=20 + k, caption='gone') for k in range(6)], write_images=False)
    with pytest.raises(FileNotFoundError) as err:
        _build(tmp_path)
    text = str(err.value)
    folder = osp.join(str(tmp_path), 'train2017')
    assert path in text and '6 of 9 image files' in text and f'"{folder}"' in text, text
    assert all(osp.join(folder, f'gone{k}.png') in text for k in range(5)), text
    assert 'gone5.png' not in text and 'and 1 more' in text and 'data_prefix' in text, text
    # the wrong images folder for the split is named as the folder searched
    with pytest.raises(FileNotFoundError, match=r'"[^"]*val2017"'):
        _build(tmp_path, data_prefix=dict(img_path='val2017'))


@pytest.mark.parametrize('kw', [dict(), dict(serialize_data=False), dict(indices=0)])
def test_empty_dataset(tmp_path, kw):
    path = _write(tmp_path, [], [])
    with pytest.raises(ValueError) as err:
        _build(tmp_path, **kw)
    text = str(err.value)
    assert 'has no samples' in text and path in text, text
    ds = _build(tmp_path, lazy_init=True, **kw)
    with pytest.raises(ValueError, match='has no samples'):
        len(ds)


# --- the captioned digits converter -------------------------------------------------------

@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    tool = _load_tool('make_digits_captions')
    out = str(tmp_path_factory.mktemp('digits_captions'))
    counts = tool.write_digits_captions(out, image_size=16, seed=0)
    return tool, out, counts


def test_converter_layout_and_captions(digits):
    from sklearn.datasets import load_digits
    tool, out, counts = digits
    targets = load_digits().target
    assert counts['train'] + counts['val'] == len(targets) == 1797
    for split in ('train', 'val'):
        with open(osp.join(out, 'annotations', f'captions_{split}2017.json')) as f:
            ann = json.load(f)
        assert len(ann['images']) == counts[split]
        assert len(ann['annotations']) == counts[f'{split}_captions'] == 5 * counts[split]
        assert len(os.listdir(osp.join(out, f'{split}2017'))) == counts[split]
        by_image = {}
        for a in ann['annotations']:
            by_image.setdefault(a['image_id'], []).append(a['caption'])
        for img in ann['images']:
            label = img['label']
            assert targets[img['id'] - 1] == label
            caps = by_image[img['id']]
            assert len(set(caps)) == 5, caps
            for cap in caps:
                tokens = set(cap.split())
                assert tokens & set(tool.WORDS) <= {tool.WORDS[label]}, cap
                assert tool.WORDS[label] in tokens or str(label) in tokens, cap
        ds = CocoCaptionsDataset(data_root=out, ann_file=f'annotations/captions_{split}2017.json',
                                 data_prefix=dict(img_path=f'{split}2017'), caption_sampling='all')
        assert len(ds) == counts[f'{split}_captions']


def test_converter_images_are_make_digits_dataset_splits(digits, tmp_path):
    tool, out, counts = digits
    ref = str(tmp_path / 'digits')
    _load_tool('make_digits_dataset').make_digits_dataset(ref, size=16)
    for split in ('train', 'val'):
        ref_files = {}
        for wnid in os.listdir(osp.join(ref, split)):
            for name in os.listdir(osp.join(ref, split, wnid)):
                ref_files[int(name.split('_')[-1].split('.')[0])] = osp.join(ref, split, wnid, name)
        ours = {int(n[:-4]) for n in os.listdir(osp.join(out, f'{split}2017'))}
        assert ours == set(ref_files)  # the same images in the same split
        for image_id in sorted(ours)[::97]:
            with Image.open(ref_files[image_id]) as a, \
                    Image.open(osp.join(out, f'{split}2017', f'{image_id:012d}.png')) as b:
                assert a.size == b.size == (16, 16)
                np.testing.assert_array_equal(np.asarray(a.convert('RGB')), np.asarray(b))


def test_converter_is_idempotent_and_rebuilds_half_written(digits, tmp_path):
    tool, out, counts = digits
    files = [osp.join(out, 'annotations', 'captions_train2017.json'),
             osp.join(out, 'annotations', 'captions_val2017.json'),
             osp.join(out, 'train2017', sorted(os.listdir(osp.join(out, 'train2017')))[0])]
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    assert tool.write_digits_captions(out, image_size=16, seed=0) == counts
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes  # nothing rewritten
    os.remove(files[1])  # interrupted before the last annotation file
    os.remove(files[2])
    assert tool.write_digits_captions(out, image_size=16, seed=0) == counts
    assert osp.isfile(files[1]) and osp.isfile(files[2])
    foreign = tmp_path / 'coco'
    _write(foreign, [], [])
    with pytest.raises(FileExistsError, match='not written by this tool'):
        tool.write_digits_captions(str(foreign))
    assert tool.main(['--out', str(foreign)]) == 1
