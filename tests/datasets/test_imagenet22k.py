"""ImageNet22k: tar-per-class layout read through mmap offsets."""
import gzip
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from dino_mm.datasets import ImageNet22k, dump_imagenet22k_extra
from dino_mm.datasets.transforms import CorruptImageError


def _jpeg(img, size=(40, 30)):
    buf = io.BytesIO()
    Image.fromarray(img).resize(size).save(buf, format='JPEG')
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def tar_root(tmp_path, real_images):
    root = tmp_path / 'in22k'
    root.mkdir()
    photos = list(real_images.values())
    with tarfile.open(root / 'n00000002.tar', 'w') as tar:
        _add(tar, 'n00000002_1.JPEG', _jpeg(photos[0]))
        # a long name forces a multi-block (GNU/PAX) header
        _add(tar, 'n00000002_' + 'x' * 120 + '.JPEG', _jpeg(photos[1]))
    with tarfile.open(root / 'n00000001.tar', 'w') as tar:
        _add(tar, 'n00000001_5.JPEG', _jpeg(photos[2], (50, 20)))
        _add(tar, 'n00000001_6.JPEG', gzip.compress(_jpeg(photos[3])))
        _add(tar, 'n00000001_7.JPEG', b'garbage bytes')
    return root


def test_imagenet22k_reads_tar_members(tar_root, real_images):
    extra = tar_root / 'extra'
    assert dump_imagenet22k_extra(str(tar_root), str(extra)) == 5
    entries = np.load(extra / 'entries.npy')
    assert entries.dtype.names == ('class_index', 'class_id', 'start_offset', 'end_offset',
                                   'filename')
    assert entries['class_index'].tolist() == [0, 0, 0, 1, 1]
    assert np.load(extra / 'class-ids.npy').tolist() == ['n00000001', 'n00000002']
    ds = ImageNet22k(data_root=str(tar_root), pipeline=[dict(type='dino_mm.LoadImagePIL')],
                     mmap_cache_size=1)
    assert len(ds) == 5 and ds.get_targets().tolist() == [0, 0, 0, 1, 1]
    first = ds[0]
    assert first['img'].size == (50, 20) and first['gt_label'] == 0
    assert first['img_path'].endswith('n00000001.tar:n00000001_5.JPEG')
    assert ds[1]['img'].size == (40, 30)  # gzip-wrapped member
    # decoded pixels equal decoding the original JPEG bytes (byte-exact slicing)
    expected = np.asarray(Image.open(io.BytesIO(_jpeg(real_images['coffee'], (50, 20)))))
    np.testing.assert_array_equal(np.asarray(first['img']), expected)
    assert ds[4]['gt_label'] == 1 and ds[4]['img'].size == (40, 30)  # long name
    with pytest.raises(CorruptImageError, match='n00000001_7.JPEG'):
        ds[2]
    lenient = ImageNet22k(data_root=str(tar_root), skip_corrupt=True,
                          pipeline=[dict(type='dino_mm.LoadImagePIL')])
    assert lenient[2]['img_path'].endswith('n00000002_1.JPEG') and lenient.num_skipped == 1
    import pickle
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers pickle the dataset
    assert clone[3]['gt_label'] == 1


def test_imagenet22k_missing_extra(tmp_path):
    with pytest.raises(FileNotFoundError, match='dump_imagenet22k_extra'):
        ImageNet22k(data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='tar'):
        dump_imagenet22k_extra(str(tmp_path), str(tmp_path / 'extra'))
