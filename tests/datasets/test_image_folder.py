"""ImageFolderDataset: recursive scan, extensions, labels from sub-folders."""
import os

import pytest
from PIL import Image

from dino_mm.datasets import ImageFolderDataset


@pytest.fixture
def folder(tmp_path, real_images):
    photos = list(real_images.values())
    layout = ['cat/a.jpg', 'cat/deep/b.PNG', 'dog/c.jpeg', 'dog/notes.txt', 'bird/x/y/d.png']
    for i, rel in enumerate(layout):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith('.txt'):
            path.write_text('not an image')
        else:
            Image.fromarray(photos[i % len(photos)]).resize((20, 16)).save(path)
    return tmp_path


def test_unlabelled_and_labelled(folder):
    ds = ImageFolderDataset(data_root=str(folder), pipeline=[dict(type='dino_mm.LoadImagePIL')])
    rel = [os.path.relpath(ds.get_data_info(i)['img_path'], folder) for i in range(len(ds))]
    assert rel == ['bird/x/y/d.png', 'cat/a.jpg', 'cat/deep/b.PNG', 'dog/c.jpeg']
    assert ds[0]['gt_label'] == -1 and ds[0]['img'].size == (20, 16)
    labelled = ImageFolderDataset(data_root=str(folder), with_label=True)
    assert labelled.metainfo['classes'] == ('bird', 'cat', 'dog')
    assert [labelled.get_data_info(i)['gt_label'] for i in range(4)] == [0, 1, 1, 2]
    only_png = ImageFolderDataset(data_root=str(folder), extensions=['png'])
    assert len(only_png) == 2


def test_errors_and_skip_corrupt(folder):
    (folder / 'loose.jpg').write_bytes(b'\xff\xd8broken')
    with pytest.raises(ValueError, match='loose.jpg'):
        ImageFolderDataset(data_root=str(folder), with_label=True)
    with pytest.raises(FileNotFoundError, match='extensions'):
        ImageFolderDataset(data_root=str(folder), extensions=['.gif'])
    ds = ImageFolderDataset(data_root=str(folder), skip_corrupt=True, test_mode=True,
                            pipeline=[dict(type='dino_mm.LoadImagePIL')])
    paths = [ds[i]['img_path'] for i in range(len(ds))]
    assert ds.num_skipped == 1 and paths[-1] == paths[0]  # wrapped around to index 0
