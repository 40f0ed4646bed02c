"""Bad input data that used to give silently wrong samples or misleading errors.

* 16-bit PNGs were clipped to {0, 255} by PIL's ``convert('RGB')`` (grayscale) or
  truncated to their high byte (colour): now every sample is ``round(v * 255 / 65535)``,
  while 16-bit depth maps stay raw.
* An empty class folder was dropped and every later class index shifted by one: class
  indices now follow ``labels.txt`` / the sorted folder names, and the empty class is
  named in a warning.
* A ``data_root`` that does not exist was reported as a missing metadata / annotation
  file inside it: now the root itself is named, with what to do.
"""
import importlib.util
import os
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from dino_mm.registry import DATASETS, TRANSFORMS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _expected_8bit(u16):
    """The reference conversion: the full 16-bit range onto 0..255, rounded."""
    return np.round(u16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


@pytest.fixture
def camera_u16():
    """A real photograph spread over the whole 16-bit range (not multiples of 257)."""
    from skimage import data
    cam = data.camera()[::4, ::4].astype(np.int64)  # 128 x 128
    rng = np.random.default_rng(0)
    return np.clip(cam * 257 + rng.integers(-128, 129, cam.shape), 0, 65535).astype(np.uint16)


@pytest.fixture
def gray16_png(tmp_path, camera_u16):
    path = tmp_path / 'camera16.png'
    Image.fromarray(camera_u16).save(path)  # PIL writes a 16-bit grayscale PNG
    with Image.open(path) as img:
        assert img.mode == 'I;16' and img.format == 'PNG'
    return path


def _load_pil(path, mode='RGB'):
    return TRANSFORMS.build(dict(type='dino_mm.LoadImagePIL', mode=mode))(
        dict(img_path=str(path)))['img']


# --------------------------------------------------------------- 16-bit images


def test_16bit_grayscale_png_is_scaled_not_binarised(gray16_png, camera_u16):
    want = _expected_8bit(camera_u16)
    assert len(np.unique(want)) > 200  # a real photograph, not a two-level image
    rgb = np.asarray(_load_pil(gray16_png))
    assert rgb.shape == camera_u16.shape + (3, ) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], want)
    np.testing.assert_array_equal(np.asarray(_load_pil(gray16_png, 'L')), want)
    # the feature tools' reader (tools/extract_features.py, dino_mm.apis)
    from dino_mm.apis.image_io import load_image
    np.testing.assert_array_equal(load_image(str(gray16_png)), rgb)
    np.testing.assert_array_equal(load_image(camera_u16), rgb)  # a uint16 array, too


def test_16bit_grayscale_png_through_a_dataset(tmp_path, gray16_png, camera_u16):
    root = tmp_path / 'folder'
    (root / 'cls').mkdir(parents=True)
    os.replace(gray16_png, root / 'cls' / 'a.png')
    ds = DATASETS.build(dict(type='dino_mm.ImageFolderDataset', data_root=str(root),
                             pipeline=[dict(type='dino_mm.LoadImagePIL')]))
    np.testing.assert_array_equal(np.asarray(ds[0]['img'])[..., 1], _expected_8bit(camera_u16))


@pytest.mark.parametrize('channels', [3, 4])
def test_16bit_colour_png_uses_the_full_range(tmp_path, camera_u16, channels):
    planes = [camera_u16, 65535 - camera_u16, camera_u16 // 3 + 20000, camera_u16 // 2 + 1]
    rgba = np.stack(planes[:channels], -1)
    path = tmp_path / f'colour16_{channels}.png'
    order = [2, 1, 0, 3][:channels]  # OpenCV writes BGR(A)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgba[..., order]))
    assert open(path, 'rb').read()[24] == 16  # a real 16-bit PNG (IHDR bit depth)
    want = _expected_8bit(rgba)
    got = np.asarray(_load_pil(path, 'RGBA' if channels == 4 else 'RGB'))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(_load_pil(path, 'RGB')), want[..., :3])
    from dino_mm.apis.image_io import load_image
    np.testing.assert_array_equal(load_image(str(path)), want[..., :3])


def test_8bit_images_are_unchanged(tmp_path, real_images):
    photo = real_images['coffee'][::4, ::4]
    path = tmp_path / 'coffee.png'
    Image.fromarray(photo).save(path)
    np.testing.assert_array_equal(np.asarray(_load_pil(path)), photo)
    gray = tmp_path / 'gray.png'
    Image.fromarray(photo[..., 0]).save(gray)
    np.testing.assert_array_equal(np.asarray(_load_pil(gray))[..., 2], photo[..., 0])


def test_raw_16bit_reads_are_kept(gray16_png, camera_u16):
    """Depth maps and an explicit 16-bit mode still see the raw values."""
    np.testing.assert_array_equal(np.asarray(_load_pil(gray16_png, 'I;16')), camera_u16)
    depth = TRANSFORMS.build(dict(type='dino_mm.LoadDepthMap', depth_scale=1000.0,
                                  max_depth=100.0))
    out = depth(dict(depth_map_path=str(gray16_png), img=np.zeros(camera_u16.shape + (3, )),
                     ori_shape=camera_u16.shape))
    np.testing.assert_allclose(out['gt_depth_map'], camera_u16.astype(np.float32) / 1000.0)


def test_truncated_16bit_colour_png_is_named(tmp_path, camera_u16):
    from dino_mm.datasets.transforms import CorruptImageError
    path = tmp_path / 'cut16.png'
    assert cv2.imwrite(str(path), np.stack([camera_u16] * 3, -1))
    data = open(path, 'rb').read()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptImageError, match='cut16.png'):
        _load_pil(path)


# ----------------------------------------------------- empty class folders

WNIDS = ['d0000000', 'd0000001', 'd0000002']


def _imagenet_root(tmp_path, photo, empty_train=(), missing_val=()):
    root = tmp_path / 'imagenet'
    for c, wnid in enumerate(WNIDS):
        (root / 'train' / wnid).mkdir(parents=True)
        if wnid not in empty_train:
            for idx in (1, 2):
                Image.fromarray(photo).save(root / 'train' / wnid / f'{wnid}_{idx}.JPEG',
                                            format='JPEG')
        if wnid not in missing_val:
            (root / 'val' / wnid).mkdir(parents=True)
            Image.fromarray(photo).save(
                root / 'val' / wnid / f'ILSVRC2012_val_{c + 1:08d}.JPEG', format='JPEG')
    with open(root / 'labels.txt', 'w') as f:
        f.writelines(f'{w},class {w[-1]}\n' for w in WNIDS)
    return root


def _tool():
    tool = os.path.join(REPO, 'tools', 'dataset_converters', 'make_imagenet_extra.py')
    spec = importlib.util.spec_from_file_location('make_imagenet_extra', tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_empty_class_folder_keeps_the_class_indices(tmp_path, real_images):
    photo = real_images['chelsea'][::8, ::8]
    root = _imagenet_root(tmp_path, photo, empty_train=('d0000000', ),
                          missing_val=('d0000001', ))
    extra = root / 'extra'
    with pytest.warns(UserWarning) as record:
        assert _tool().main(['--root', str(root), '--extra', str(extra),
                             '--splits', 'TRAIN', 'VAL']) == 0
    text = ' | '.join(str(w.message) for w in record)
    assert 'ImageNet TRAIN' in text and 'd0000000 (class 0, empty folder)' in text, text
    assert 'ImageNet VAL' in text and 'd0000001 (class 1, no folder)' in text, text
    assert os.path.join(str(root), 'train') in text and 'labels.txt' in text, text

    train = np.load(extra / 'entries-TRAIN.npy')
    assert train['class_id'].tolist() == ['d0000001'] * 2 + ['d0000002'] * 2
    assert train['class_index'].tolist() == [1, 1, 2, 2]  # not shifted to 0, 0, 1, 1
    val = np.load(extra / 'entries-VAL.npy')
    assert val['class_id'].tolist() == ['d0000000', 'd0000002']
    assert val['class_index'].tolist() == [0, 2]  # same indices as TRAIN
    for split in ('TRAIN', 'VAL'):
        assert np.load(extra / f'class-ids-{split}.npy').tolist() == WNIDS
        assert np.load(extra / f'class-names-{split}.npy').tolist() == [
            'class 0', 'class 1', 'class 2']
    ds = DATASETS.build(dict(type='dino_mm.ImageNet', split='TRAIN', data_root=str(root),
                             extra=str(extra)))
    assert ds.metainfo['classes'] == ('class 0', 'class 1', 'class 2')
    assert [ds.get_data_info(i)['gt_label'] for i in range(len(ds))] == [1, 1, 2, 2]
    assert ds.get_data_info(2)['class_id'] == 'd0000002'


def test_complete_imagenet_gives_no_warning(tmp_path, real_images):
    root = _imagenet_root(tmp_path, real_images['chelsea'][::8, ::8])
    from dino_mm.datasets import dump_imagenet_extra
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        dump_imagenet_extra(str(root), str(root / 'extra'), splits=('TRAIN', 'VAL'))
    assert np.load(root / 'extra' / 'entries-TRAIN.npy')['class_index'].tolist() == [
        0, 0, 1, 1, 2, 2]


def test_duplicate_class_in_labels_txt_is_named(tmp_path, real_images):
    root = _imagenet_root(tmp_path, real_images['chelsea'][::8, ::8])
    with open(root / 'labels.txt', 'a') as f:
        f.write('d0000001,again\n')
    from dino_mm.datasets import dump_imagenet_extra
    with pytest.raises(ValueError, match=r"labels.txt\" lists class 'd0000001' twice"):
        dump_imagenet_extra(str(root), str(root / 'extra'), splits=('TRAIN', ))


def test_image_folder_empty_class_keeps_the_class_indices(tmp_path, real_images):
    root = tmp_path / 'folder'
    for name in ('a_empty', 'b', 'c'):
        (root / name).mkdir(parents=True)
    (root / 'a_empty' / 'notes.txt').write_text('not an image')
    for name in ('b', 'c'):
        Image.fromarray(real_images['coffee'][::8, ::8]).save(root / name / 'x.png')
    with pytest.warns(UserWarning, match=r'"[^"]*a_empty" \(class 0\)'):
        ds = DATASETS.build(dict(type='dino_mm.ImageFolderDataset', data_root=str(root),
                                 with_label=True))
    assert ds.metainfo['classes'] == ('a_empty', 'b', 'c')
    assert [ds.get_data_info(i)['gt_label'] for i in range(len(ds))] == [1, 2]


# ------------------------------------------------------ missing data_root


def _missing_root_cfgs(root):
    return {
        'ImageNet': dict(type='dino_mm.ImageNet', split='TRAIN', data_root=root),
        'ImageNet22k': dict(type='dino_mm.ImageNet22k', data_root=root),
        'ImageFolderDataset': dict(type='dino_mm.ImageFolderDataset', data_root=root),
        'NYUDepthDataset': dict(type='dino_mm.NYUDepthDataset', data_root=root,
                                ann_file='nyu_train.txt'),
        'CheckedCocoDataset': dict(type='dino_mm.CheckedCocoDataset', data_root=root,
                                   ann_file='annotations/train.json',
                                   data_prefix=dict(img='train2017/'), pipeline=[]),
    }


@pytest.mark.parametrize('name', list(_missing_root_cfgs('')))
def test_missing_data_root_is_named(tmp_path, name):
    root = str(tmp_path / 'no_such_dataset')
    with pytest.raises(FileNotFoundError) as err:
        DATASETS.build(_missing_root_cfgs(root)[name])
    text = str(err.value)
    assert f'data_root "{root}" does not exist' in text, text
    assert 'train_dataloader.dataset.data_root=' in text and name in text, text


def test_missing_data_root_is_named_lazily_and_file_root(tmp_path):
    root = str(tmp_path / 'no_such_dataset')
    ds = DATASETS.build(dict(type='dino_mm.ImageNet', split='VAL', data_root=root,
                             lazy_init=True))
    with pytest.raises(FileNotFoundError, match=r'split VAL\): data_root .* does not exist'):
        len(ds)
    a_file = tmp_path / 'imagenet.tar'
    a_file.write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='is a file, not a folder'):
        DATASETS.build(dict(type='dino_mm.ImageNet', data_root=str(a_file)))


def test_make_imagenet_extra_names_a_missing_root(tmp_path, capsys):
    root = str(tmp_path / 'no_such_imagenet')
    assert _tool().main(['--root', root, '--extra', str(tmp_path / 'extra')]) == 1
    err = capsys.readouterr().err
    assert f'ImageNet root "{root}" does not exist' in err and '--root' in err, err
    assert not (tmp_path / 'extra').exists()
