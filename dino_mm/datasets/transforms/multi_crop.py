"""Multi-crop augmentation of DINOv2 / DINOv3 (official ``DataAugmentationDINO``).

The pieces (geometric crop, colour distortion, blur, normalisation) are module-level
builders so DINOv3-style variants can recombine them.

**Blur-probability quirk.** The official blur wrapper subclasses
``torchvision.transforms.RandomApply`` and passes ``1 - p`` as the apply probability,
believing torchvision uses ``p`` as the probability of *keeping* the input. So the
nominal probabilities 1.0 / 0.1 / 0.5 (global crop 1 / global crop 2 / local crops,
from the DINO and iBOT papers) are applied as 0.0 / 0.9 / 0.5. Every released DINOv2
and DINOv3 model was trained with the effective values, so
``official_blur_quirk=True`` (default) reproduces them; ``False`` gives the intended
1.0 / 0.1 / 0.5.

With the default (DINOv2) arguments the torchvision transforms are called in the
official order, so for equal ``torch.manual_seed`` the crops are identical to the
official ``DataAugmentationDINO``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from dino_mm.registry import TRANSFORMS

__all__ = [
    'DINOMultiCrop', 'RandomGaussianBlur', 'make_geometric_augmentation',
    'make_color_distortion', 'make_normalize', 'IMAGENET_MEAN', 'IMAGENET_STD'
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomGaussianBlur(T.RandomApply):
    """Gaussian blur (kernel 9, sigma ~ U[radius_min, radius_max]) applied at random.

    Args:
        p (float): Nominal blur probability as written in the official configs.
        official_blur_quirk (bool): Apply with probability ``1 - p`` like the official
            code (see the module docstring). Defaults to True.
        radius_min (float): Smallest sigma. Defaults to 0.1.
        radius_max (float): Largest sigma. Defaults to 2.0.
    """

    def __init__(self,
                 p: float = 0.5,
                 official_blur_quirk: bool = True,
                 radius_min: float = 0.1,
                 radius_max: float = 2.0) -> None:
        self.nominal_p = p
        apply_p = 1.0 - p if official_blur_quirk else p
        super().__init__([T.GaussianBlur(kernel_size=9, sigma=(radius_min, radius_max))],
                         p=apply_p)


def make_geometric_augmentation(size: int, scale: Tuple[float, float],
                                horizontal_flips: bool = True) -> T.Compose:
    """RandomResizedCrop (bicubic) followed by an optional horizontal flip (p=0.5)."""
    steps = [T.RandomResizedCrop(size, scale=tuple(scale),
                                 interpolation=InterpolationMode.BICUBIC)]
    if horizontal_flips:
        steps.append(T.RandomHorizontalFlip(p=0.5))
    return T.Compose(steps)


def make_color_distortion(jitter_p: float = 0.8,
                          jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
                          grayscale_p: float = 0.2) -> T.Compose:
    """Colour jitter (brightness, contrast, saturation, hue) then random grayscale."""
    return T.Compose([
        T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p),
        T.RandomGrayscale(p=grayscale_p),
    ])


def make_normalize(mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """PIL -> float CHW tensor in [0, 1] -> normalised."""
    return T.Compose([T.ToTensor(), T.Normalize(mean=tuple(mean), std=tuple(std))])


@TRANSFORMS.register_module()
class DINOMultiCrop:
    """Two global and N local crops of ``results['img']`` (a PIL image).

    Per crop: RandomResizedCrop (bicubic) -> flip -> colour jitter (p=0.8) -> grayscale
    (p=0.2) -> Gaussian blur (nominal 1.0 / 0.1 / 0.5, see ``official_blur_quirk``) ->
    solarize (threshold 128, p=0.2, global crop 2 only) -> normalise.

    Adds ``global_crops`` (list of 2 CHW float tensors), ``global_crops_teacher`` (the
    same tensors, as in the official code), ``local_crops`` (list) and, when
    ``gram_teacher_crops_size`` is set, ``gram_teacher_crops``: the *same* geometric
    crop as each global crop, resized to the Gram size, without photometric
    distortion if ``gram_teacher_no_distortions``.

    Args:
        global_crops_scale (tuple[float, float]): Defaults to (0.32, 1.0).
        local_crops_scale (tuple[float, float]): Defaults to (0.05, 0.32).
        local_crops_number (int): Defaults to 8.
        global_crops_size (int): Defaults to 224.
        local_crops_size (int): Defaults to 96 (official p14 configs: 98).
        official_blur_quirk (bool): Keep the official inverted blur probabilities
            (effective 0.0 / 0.9 / 0.5). Defaults to True.
        horizontal_flips (bool): DINOv3 ``crops.horizontal_flips``. Defaults to True.
        share_color_jitter (bool): DINOv3 ``crops.share_color_jitter``: one colour
            distortion applied to the whole image before cropping instead of one per
            crop. Defaults to False.
        gram_teacher_crops_size (int, optional): DINOv3 Gram-teacher crop size.
        gram_teacher_no_distortions (bool): Gram crops only normalised. Defaults to
            False.
        mean (Sequence[float]): Normalisation mean. Defaults to ImageNet.
        std (Sequence[float]): Normalisation std. Defaults to ImageNet.
        keep_img (bool): Keep the PIL image in ``results['img']``. Defaults to False
            (it would be sent through the DataLoader workers for nothing).
        blur_probabilities (Sequence[float]): Nominal blur probabilities of global crop
            1, global crop 2 and the local crops, as written in the official code
            (``official_blur_quirk`` inverts them). Defaults to (1.0, 0.1, 0.5).
        blur_sigma (Sequence[float]): Blur sigma range. Defaults to (0.1, 2.0).
        solarize_probability (float): Solarisation of global crop 2. Defaults to 0.2.
        color_jitter_probability (float): Colour jitter probability. Defaults to 0.8.

    The last four default to the official values; the embedded demo (32 px digits)
    changes them, see ``benchmarks/README.md`` (demo ablation).
    """

    def __init__(self,
                 global_crops_scale: Tuple[float, float] = (0.32, 1.0),
                 local_crops_scale: Tuple[float, float] = (0.05, 0.32),
                 local_crops_number: int = 8,
                 global_crops_size: int = 224,
                 local_crops_size: int = 96,
                 official_blur_quirk: bool = True,
                 horizontal_flips: bool = True,
                 share_color_jitter: bool = False,
                 gram_teacher_crops_size: Optional[int] = None,
                 gram_teacher_no_distortions: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 keep_img: bool = False,
                 blur_probabilities: Sequence[float] = (1.0, 0.1, 0.5),
                 blur_sigma: Sequence[float] = (0.1, 2.0),
                 solarize_probability: float = 0.2,
                 color_jitter_probability: float = 0.8) -> None:
        if local_crops_number < 0:
            raise ValueError(f'local_crops_number must be >= 0, got {local_crops_number}.')
        for name, scale in (('global_crops_scale', global_crops_scale),
                            ('local_crops_scale', local_crops_scale)):
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ValueError(f'{name} must be (min, max) with 0 < min <= max <= 1, '
                                 f'got {scale}.')
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.official_blur_quirk = official_blur_quirk
        self.horizontal_flips = horizontal_flips
        self.share_color_jitter = share_color_jitter
        self.gram_teacher_crops_size = gram_teacher_crops_size
        self.gram_teacher_no_distortions = gram_teacher_no_distortions
        self.keep_img = keep_img

        self.geometric_augmentation_global = make_geometric_augmentation(
            global_crops_size, global_crops_scale, horizontal_flips)
        self.geometric_augmentation_local = make_geometric_augmentation(
            local_crops_size, local_crops_scale, horizontal_flips)
        if len(blur_probabilities) != 3 or len(blur_sigma) != 2:
            raise ValueError('blur_probabilities needs 3 values (global 1, global 2, local) '
                             f'and blur_sigma 2 (min, max); got {tuple(blur_probabilities)} '
                             f'and {tuple(blur_sigma)}.')
        self.color_distortion = make_color_distortion(jitter_p=color_jitter_probability)
        self.normalize = make_normalize(mean, std)
        per_crop_color = [] if share_color_jitter else [self.color_distortion]

        def blur(p):
            return RandomGaussianBlur(p, official_blur_quirk, *blur_sigma)
        self.global_transfo1 = T.Compose(per_crop_color + [
            blur(blur_probabilities[0]), self.normalize])
        self.global_transfo2 = T.Compose(per_crop_color + [
            blur(blur_probabilities[1]),
            T.RandomSolarize(threshold=128, p=solarize_probability), self.normalize])
        self.local_transfo = T.Compose(per_crop_color + [
            blur(blur_probabilities[2]), self.normalize])

    def _global_crop_pair(self, image, size: int) -> Tuple[object, Optional[object]]:
        """One geometric global crop, plus the same box at the Gram size if needed."""
        if self.gram_teacher_crops_size is None:
            return self.geometric_augmentation_global(image), None
        top, left, h, w = T.RandomResizedCrop.get_params(image, self.global_crops_scale,
                                                         (3. / 4., 4. / 3.))
        flip = self.horizontal_flips and torch.rand(1).item() < 0.5
        crops = []
        for out_size in (size, self.gram_teacher_crops_size):
            crop = TF.resized_crop(image, top, left, h, w, [out_size, out_size],
                                   InterpolationMode.BICUBIC)
            crops.append(TF.hflip(crop) if flip else crop)
        return crops[0], crops[1]

    def __call__(self, results: dict) -> dict:
        image = results['img'] if self.keep_img else results.pop('img')
        if not isinstance(image, Image.Image):
            raise TypeError('DINOMultiCrop expects a PIL image in results["img"] (use '
                            f'dino_mm.LoadImagePIL before it), got {type(image).__name__}.')
        if self.share_color_jitter:
            image = self.color_distortion(image)
        base1, gram1 = self._global_crop_pair(image, self.global_crops_size)
        crop1 = self.global_transfo1(base1)
        base2, gram2 = self._global_crop_pair(image, self.global_crops_size)
        crop2 = self.global_transfo2(base2)
        results['global_crops'] = [crop1, crop2]
        results['global_crops_teacher'] = [crop1, crop2]
        if self.gram_teacher_crops_size is not None:
            if self.gram_teacher_no_distortions:
                results['gram_teacher_crops'] = [self.normalize(gram1), self.normalize(gram2)]
            else:
                results['gram_teacher_crops'] = [self.global_transfo1(gram1),
                                                 self.global_transfo2(gram2)]
        results['local_crops'] = [
            self.local_transfo(self.geometric_augmentation_local(image))
            for _ in range(self.local_crops_number)
        ]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(global={self.global_crops_size}'
                f'@{self.global_crops_scale}, local={self.local_crops_number}x'
                f'{self.local_crops_size}@{self.local_crops_scale}, '
                f'official_blur_quirk={self.official_blur_quirk}, '
                f'horizontal_flips={self.horizontal_flips}, '
                f'share_color_jitter={self.share_color_jitter}, '
                f'gram_teacher_crops_size={self.gram_teacher_crops_size})')
