"""DINOMultiCrop: bitwise parity with the official DataAugmentationDINO, probabilities."""
import pytest
import torch
import torchvision.transforms.functional as TVF
from PIL import Image

from dino_mm.datasets.transforms import DINOMultiCrop, LoadImagePIL

from tests.oracles import require

augmentations = require('dinov2.data.augmentations')


@pytest.fixture
def photo(real_images):
    return Image.fromarray(real_images['chelsea'])


def test_parity_with_official_augmentation(photo):
    kw = dict(global_crops_scale=(0.32, 1.0), local_crops_scale=(0.05, 0.32),
              local_crops_number=3, global_crops_size=56, local_crops_size=28)
    ref = augmentations.DataAugmentationDINO(**kw)
    ours = DINOMultiCrop(**kw)
    for seed in range(4):
        torch.manual_seed(seed)
        expected = ref(photo)
        torch.manual_seed(seed)
        got = ours(dict(img=photo))
        assert 'img' not in got
        for key in ('global_crops', 'global_crops_teacher', 'local_crops'):
            assert len(got[key]) == len(expected[key])
            for a, b in zip(got[key], expected[key]):
                assert a.dtype == torch.float32
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got['global_crops'][0].shape == (3, 56, 56)
    assert got['local_crops'][0].shape == (3, 28, 28)


def _count_ops(monkeypatch, transform, image, n, ops=('gaussian_blur', 'solarize',
                                                       'rgb_to_grayscale')):
    """Run ``transform`` n times and count, per crop, which photometric ops ran."""
    current = {'crop': None}
    counts = {}

    def spy(name):

        def wrapped(img, *args, **kwargs):
            key = (current['crop'], name)
            counts[key] = counts.get(key, 0) + 1
            return img  # counting is enough; skipping the op keeps the test fast

        return wrapped

    for op in ops:
        monkeypatch.setattr(TVF, op, spy(op))

    def tag(name, fn):

        def wrapped(img):
            current['crop'] = name
            return fn(img)

        return wrapped

    transform.global_transfo1 = tag('global1', transform.global_transfo1)
    transform.global_transfo2 = tag('global2', transform.global_transfo2)
    transform.local_transfo = tag('local', transform.local_transfo)
    for _ in range(n):
        transform(dict(img=image))
    return lambda crop, op: counts.get((crop, op), 0)


@pytest.mark.parametrize('quirk, blur_p', [(True, (0.0, 0.9, 0.5)), (False, (1.0, 0.1, 0.5))])
def test_per_crop_probabilities(monkeypatch, quirk, blur_p):
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    n, n_local = 600, 2
    t = DINOMultiCrop(local_crops_number=n_local, global_crops_size=16, local_crops_size=8,
                      official_blur_quirk=quirk)
    count = _count_ops(monkeypatch, t, image, n)
    # 4 sigma of a binomial with n=600 is at most 0.082; n=1200 (locals): 0.058.
    tol = 0.082
    for crop, p, m in (('global1', blur_p[0], n), ('global2', blur_p[1], n),
                       ('local', blur_p[2], n * n_local)):
        assert count(crop, 'gaussian_blur') / m == pytest.approx(p, abs=tol), crop
        assert count(crop, 'rgb_to_grayscale') / m == pytest.approx(0.2, abs=tol), crop
    assert count('global2', 'solarize') / n == pytest.approx(0.2, abs=tol)
    assert count('global1', 'solarize') == 0 and count('local', 'solarize') == 0
    if quirk:  # probability exactly 0: never blurred
        assert count('global1', 'gaussian_blur') == 0
    else:
        assert count('global1', 'gaussian_blur') == n


def test_photometric_knobs(monkeypatch):
    """The demo's weaker photometric augmentation: no blur, no solarisation, jitter 0.4."""
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    n = 400
    t = DINOMultiCrop(local_crops_number=2, global_crops_size=16, local_crops_size=8,
                      official_blur_quirk=False, blur_probabilities=(0.0, 0.5, 0.0),
                      blur_sigma=(0.1, 0.5), solarize_probability=0.0,
                      color_jitter_probability=0.4)
    blur = t.global_transfo2.transforms[1].transforms[0]
    assert tuple(blur.sigma) == (0.1, 0.5)
    count = _count_ops(monkeypatch, t, image, n,
                       ops=('gaussian_blur', 'solarize', 'adjust_brightness'))
    assert count('global1', 'gaussian_blur') == 0 and count('local', 'gaussian_blur') == 0
    assert count('global2', 'gaussian_blur') / n == pytest.approx(0.5, abs=0.1)
    assert count('global2', 'solarize') == 0
    assert count('global1', 'adjust_brightness') / n == pytest.approx(0.4, abs=0.1)
    with pytest.raises(ValueError, match='blur_probabilities needs 3 values'):
        DINOMultiCrop(blur_probabilities=(0.5, 0.5))


def test_dinov3_variants(photo):
    t = DINOMultiCrop(local_crops_number=2, global_crops_size=32, local_crops_size=16,
                      horizontal_flips=False, gram_teacher_crops_size=64,
                      gram_teacher_no_distortions=True, share_color_jitter=True,
                      keep_img=True)
    out = t(dict(img=photo))
    assert out['img'] is photo
    assert [c.shape for c in out['gram_teacher_crops']] == [(3, 64, 64)] * 2
    assert len(out['local_crops']) == 2
    assert not any(type(s).__name__ == 'RandomHorizontalFlip'
                   for s in t.geometric_augmentation_global.transforms)
    # The Gram crop is the same geometric crop: downsampled it matches the student
    # crop up to interpolation and the student's photometric distortion (which is
    # shared across crops here, so we compare colour-normalised structure).
    g = out['gram_teacher_crops'][0].unsqueeze(0)
    s = out['global_crops'][0].unsqueeze(0)
    g_small = torch.nn.functional.interpolate(g, size=32, mode='bilinear', antialias=True)

    def standardise(x):
        x = x.mean(1)
        return (x - x.mean()) / (x.std() + 1e-6)

    corr = (standardise(g_small) * standardise(s)).mean()
    assert corr > 0.8


def test_bad_arguments_and_input():
    with pytest.raises(ValueError, match='global_crops_scale'):
        DINOMultiCrop(global_crops_scale=(0.5, 0.1))
    with pytest.raises(TypeError, match='LoadImagePIL'):
        DINOMultiCrop()(dict(img=torch.zeros(3, 8, 8)))
    assert isinstance(LoadImagePIL(), LoadImagePIL)
