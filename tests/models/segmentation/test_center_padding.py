"""Center padding to a multiple of the patch size (official split: floor half first)."""
import pytest
import torch

from tests.oracles import require

require('mmseg.models')

from dino_mm.models.segmentation.center_padding import (  # noqa: E402
    CenterPadding, center_pad, center_pad_amounts)


@pytest.mark.parametrize('size,multiple,expected', [
    (28, 14, (0, 0)),   # already a multiple
    (30, 14, (6, 6)),   # 42 - 30 = 12
    (29, 14, (6, 7)),   # 42 - 29 = 13: the extra pixel goes after
    (1, 16, (7, 8)),
])
def test_amounts_hand_checked(size, multiple, expected):
    assert center_pad_amounts(size, multiple) == expected


def test_pad_places_image_in_the_middle_with_zeros():
    x = torch.randn(2, 3, 29, 30)
    y = CenterPadding(14)(x)
    assert y.shape == (2, 3, 42, 42)
    assert torch.equal(y[:, :, 6:35, 6:36], x)
    border = y.clone()
    border[:, :, 6:35, 6:36] = 0
    assert border.abs().sum() == 0
    assert center_pad(x[:, :, :28, :28], 14) is not None
    assert torch.equal(center_pad(x[:, :, :28, :28], 14), x[:, :, :28, :28])


def test_bad_multiple_is_rejected():
    with pytest.raises(ValueError, match='positive multiple'):
        center_pad_amounts(10, 0)
