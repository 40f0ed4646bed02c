"""Patch-feature extractors: the one interface every feature tool is written against.

A *patch-feature extractor* is any callable that maps a normalised image batch
``(B, 3, H, W)`` (H, W multiples of ``patch_size``) to a feature grid
``(B, H / patch_size, W / patch_size, D)``. Two are provided:

* :class:`BackboneFeatures` wraps a dino_mm backbone (final-norm patch tokens, or the
  tokens of one intermediate block);
* :class:`PixelPatchFeatures` uses the raw pixels of each patch. It has no learned
  weights, so the tools' geometry (shifts, matches, propagation) can be checked against
  known answers, and documentation pictures are meaningful without released weights.
"""
import logging
import os
import os.path as osp
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from dino_mm.utils.precision import precision_autocast, resolve_precision

from .image_io import ImageLike, load_image, patch_grid_size, to_tensor


@dataclass
class ImageFeatures:
    """Patch features of one image and what is needed to map them back to pixels.

    Attributes:
        features (torch.Tensor): (rows, cols, D) float32 patch features.
        image (np.ndarray): The original uint8 (H, W, 3) image.
        patch_size (int): Patch size of the extractor.
        name (str): Path or label of the image (for messages and outputs).
    """
    features: torch.Tensor
    image: np.ndarray
    patch_size: int
    name: str = 'image'

    @property
    def grid(self) -> Tuple[int, int]:
        return int(self.features.shape[0]), int(self.features.shape[1])

    def patch_centers(self) -> np.ndarray:
        """(rows * cols, 2) pixel coordinates (x, y) of patch centres in the original image."""
        rows, cols = self.grid
        height, width = self.image.shape[:2]
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
        x = (xs.reshape(-1) + 0.5) * width / cols
        y = (ys.reshape(-1) + 0.5) * height / rows
        return np.stack([x, y], axis=1)

    def pixel_to_patch(self, points: np.ndarray) -> np.ndarray:
        """Flat patch indices of (N, 2) pixel coordinates (x, y) of the original image."""
        rows, cols = self.grid
        height, width = self.image.shape[:2]
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        bad = (pts[:, 0] < 0) | (pts[:, 0] >= width) | (pts[:, 1] < 0) | (pts[:, 1] >= height)
        if bad.any():
            raise ValueError(f'Keypoints {pts[bad].tolist()} lie outside {self.name} '
                             f'({width}x{height} pixels, coordinates are (x, y)).')
        c = np.minimum((pts[:, 0] * cols / width).astype(int), cols - 1)
        r = np.minimum((pts[:, 1] * rows / height).astype(int), rows - 1)
        return r * cols + c


class PatchFeatureExtractor:
    """Base class: ``__call__(images (B, 3, H, W)) -> (B, rows, cols, D)``.

    Args:
        patch_size (int): Patch size in pixels.
        mean (Sequence[float]): Normalisation mean (0-1 scale). Defaults to ImageNet.
        std (Sequence[float]): Normalisation std (0-1 scale). Defaults to ImageNet.
    """

    def __init__(self, patch_size: int, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        self.patch_size = int(patch_size)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, images: torch.Tensor) -> Tuple[int, int]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'Expected images of shape (B, 3, H, W), got {tuple(images.shape)}.')
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f'Image size {h}x{w} is not a multiple of the patch size '
                             f'{self.patch_size}; resize with dino_mm.apis.to_tensor first.')
        return h // self.patch_size, w // self.patch_size

    def image_features(self, image: ImageLike, size: Optional[int] = None,
                       name: Optional[str] = None) -> ImageFeatures:
        """Load ``image``, resize it so its shorter side is ~``size``, extract features.

        Args:
            image (str | np.ndarray): Path or uint8 array.
            size (int, optional): Shorter side in pixels before rounding to whole
                patches; None keeps the image size (rounded down to whole patches).
            name (str, optional): Label for messages. Defaults to the path.

        Returns:
            ImageFeatures: features of shape (rows, cols, D).
        """
        label = name or (os.fspath(image) if not isinstance(image, np.ndarray) else 'image')
        array = load_image(image, name=label)
        grid = patch_grid_size(array.shape[0], array.shape[1], size, self.patch_size, label)
        x = to_tensor(array, grid, self.patch_size, self.mean, self.std)
        feats = self(x[None])[0].float()
        return ImageFeatures(feats, array, self.patch_size, label)


class PixelPatchFeatures(PatchFeatureExtractor):
    """Raw pixels of each patch as its feature vector (D = 3 * patch_size ** 2).

    Args:
        patch_size (int): Patch size. Defaults to 14.
        center (bool): Subtract each patch's mean colour, so that features describe
            texture rather than brightness. Defaults to False.
        **kwargs: ``mean`` / ``std`` of :class:`PatchFeatureExtractor`.
    """

    def __init__(self, patch_size: int = 14, center: bool = False, **kwargs: Any) -> None:
        super().__init__(patch_size, **kwargs)
        self.center = center

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rows, cols = self._check(images)
        p = self.patch_size
        b = images.shape[0]
        x = images.float().reshape(b, 3, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        x = x.reshape(b, rows, cols, 3 * p * p)
        if self.center:
            x = x - x.mean(dim=-1, keepdim=True)
        return x


def backbone_patch_size(model: nn.Module) -> int:
    """Patch size of a dino_mm / timm-style ViT (``patch_size`` or ``patch_embed``)."""
    for owner in (model, getattr(model, 'patch_embed', None)):
        value = getattr(owner, 'patch_size', None) if owner is not None else None
        if value is not None:
            return int(value[0] if isinstance(value, (tuple, list)) else value)
    raise AttributeError(f'Cannot find the patch size of {type(model).__name__}: it has '
                         f'neither `patch_size` nor `patch_embed.patch_size`.')


class BackboneFeatures(PatchFeatureExtractor):
    """Patch tokens of a DINOv2/DINOv3 backbone as a feature grid.

    Args:
        model (nn.Module): A backbone with ``forward_features`` (and
            ``get_intermediate_layers`` when ``layer`` is given).
        layer (int, optional): 0-based block index to read (final norm applied, as the
            official ``get_intermediate_layers(norm=True)``); None reads
            ``x_norm_patchtokens`` of ``forward_features``. Defaults to None.
        device (str | torch.device, optional): Device to run on. Defaults to the
            model's device.
        precision (str): Precision of the forward, ``'auto'`` (bf16 on a CPU with native
            bf16 and on CUDA, else fp32), ``'fp32'``, ``'bf16'`` or ``'fp16'`` (CUDA); see
            :mod:`dino_mm.utils.precision`. Features are returned as fp32. The choice is
            logged when the extractor is built. Defaults to 'auto'.
        **kwargs: ``mean`` / ``std`` of :class:`PatchFeatureExtractor`.
    """

    def __init__(self, model: nn.Module, layer: Optional[int] = None,
                 device: Optional[Any] = None, precision: str = 'auto',
                 **kwargs: Any) -> None:
        super().__init__(backbone_patch_size(model), **kwargs)
        self.model = model.eval()
        self.layer = layer
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else 'cpu'
        self.device = torch.device(device)
        # Resolved once here, so the log line names the precision before any image is read.
        self.precision = resolve_precision(precision, self.device, owner='BackboneFeatures')

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rows, cols = self._check(images)
        x = images.to(self.device, torch.float32)
        with precision_autocast(self.precision, self.device):
            if self.layer is None:
                tokens = self.model.forward_features(x)['x_norm_patchtokens']
                feats = tokens.reshape(x.shape[0], rows, cols, -1)
            else:
                (grid, ) = self.model.get_intermediate_layers(x, n=[self.layer],
                                                              reshape=True, norm=True)
                feats = grid.permute(0, 2, 3, 1)
        return feats.float().cpu()


def build_backbone(arch: Optional[str] = None, weights: Optional[str] = None,
                   device: Any = 'cpu', **overrides: Any) -> nn.Module:
    """Build a dino_mm backbone by official name and load a local official checkpoint.

    Args:
        arch (str, optional): Official name (``'dinov2_vits14'``, ``'dinov3_vitb16'``, ...).
            None: the arch recorded in ``weights`` (files written by
            ``tools/convert/pretrain_to_backbone.py``), else ``'dinov2_vits14'``.
        weights (str, optional): Path of a local checkpoint (official, HF transformers or
            timm layout; a file or a HF model folder). Its recorded architecture (if any)
            is used, ``overrides`` on top.
            None keeps the random initialisation and logs a warning, because features of
            a random backbone are noise. Defaults to None.
        device (str | torch.device): Device. Defaults to 'cpu'.
        **overrides: Constructor overrides (e.g. ``depth=2, embed_dim=64``).

    Returns:
        nn.Module: The backbone in eval mode.
    """
    if weights is not None:
        if not osp.exists(weights):  # a file or a HF model folder
            raise FileNotFoundError(f'Checkpoint not found: {weights!r}. Download the '
                                    f'official {arch or "backbone"} weights and pass their '
                                    'local path.')
    if weights is not None and 'convnext' not in (arch or ''):
        from dino_mm.models.backbones import build_backbone_from_file
        return build_backbone_from_file(weights, arch=arch, default_arch='dinov2_vits14',
                                        **overrides).to(device).eval()
    arch = arch or 'dinov2_vits14'
    try:
        from dino_mm import hub
        constructor = getattr(hub, arch, None)
    except ImportError:
        constructor = None
    if constructor is not None:
        model = constructor(pretrained=False, **overrides)
    else:
        # Built directly rather than through MODELS: a registry lookup imports every
        # registry location, including the mmseg / mmdet glue this tool does not need.
        from dino_mm.models.backbones import DINO_VIT_ARCHS, DinoVisionTransformer
        if arch not in DINO_VIT_ARCHS:
            raise ValueError(f'Unknown backbone arch {arch!r}; choose one of '
                             f'{sorted(DINO_VIT_ARCHS)}.')
        model = DinoVisionTransformer(arch, **overrides)
        # Parameters are uninitialised until init_weights (DINOv3's k-bias mask is NaN).
        model.init_weights()
    if weights is None:
        print_log(f'No --weights given: {arch} is randomly initialised, so its features '
                  f'are noise. Pass a local official checkpoint for meaningful output.',
                  logger='current', level=logging.WARNING)
    else:  # ConvNeXt
        from dino_mm.models.backbones import load_checkpoint_strict
        load_checkpoint_strict(model, weights)
    return model.to(device).eval()


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last dimension (eps keeps all-zero patches finite)."""
    return F.normalize(features.float(), dim=-1, eps=1e-12)
