"""Bad inputs give errors that name the input; resizing keeps whole patches."""
import numpy as np
import pytest

from dino_mm.apis import (PixelPatchFeatures, list_images, load_image, patch_grid_size,
                          save_png)


def test_missing_file_is_named(tmp_path):
    path = str(tmp_path / 'nope.jpg')
    with pytest.raises(FileNotFoundError, match='nope.jpg'):
        load_image(path)


def test_non_image_file_is_named(tmp_path):
    path = tmp_path / 'notes.png'
    path.write_text('not an image')
    with pytest.raises(ValueError, match='notes.png'):
        load_image(str(path))


def test_image_smaller_than_a_patch(tmp_path):
    path = save_png(np.zeros((10, 40, 3), np.uint8), str(tmp_path / 'tiny.png'))
    with pytest.raises(ValueError, match=r'tiny.png.*smaller than one 14x14 patch'):
        PixelPatchFeatures(14).image_features(path, 224)


def test_grid_keeps_aspect_and_whole_patches(real_images):
    assert patch_grid_size(512, 512, 224, 14) == (16, 16)
    rows, cols = patch_grid_size(300, 451, 224, 14)  # chelsea: 300x451
    assert rows == 16 and cols == 24
    feats = PixelPatchFeatures(14).image_features(real_images['chelsea'], 224)
    assert feats.grid == (16, 24) and feats.features.shape[-1] == 3 * 14 * 14


def test_list_images_recursive(tmp_path):
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    save_png(np.zeros((20, 20, 3), np.uint8), str(tmp_path / 'a' / 'b' / 'x.png'))
    save_png(np.zeros((20, 20, 3), np.uint8), str(tmp_path / 'y.png'))
    (tmp_path / 'readme.txt').write_text('x')
    assert [p[len(str(tmp_path)) + 1:] for p in list_images(str(tmp_path))] == \
        ['a/b/x.png', 'y.png']
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No image files'):
        list_images(str(tmp_path / 'empty'))
