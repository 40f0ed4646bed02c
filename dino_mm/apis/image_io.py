"""Image input/output shared by the feature tools: reading, resizing to a patch grid,
normalising, and drawing the pictures the tools write (side-by-side panels, match lines,
overlays).

Every reader error names the file at fault, because the tools are usually pointed at a
folder of user images and a bare PIL traceback does not say which one broke.
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.gif')

ImageLike = Union[str, os.PathLike, np.ndarray]


def load_image(image: ImageLike, name: Optional[str] = None) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3), or validate an array given directly.

    Args:
        image (str | PathLike | np.ndarray): A path to an image file, or an array of
            shape (H, W), (H, W, 3) or (H, W, 4) (uint8, or float in [0, 1]).
        name (str, optional): Name used in error messages for arrays. Defaults to None.

    Returns:
        np.ndarray: uint8 array of shape (H, W, 3).

    Raises:
        FileNotFoundError: The path does not exist.
        ValueError: The file is not a readable image, or the array has a bad shape.
    """
    if isinstance(image, np.ndarray):
        array = image
        label = name or f'array of shape {image.shape}'
    else:
        path = os.fspath(image)
        label = path
        if not osp.exists(path):
            raise FileNotFoundError(
                f'Image file not found: {path!r}. Check the path (relative paths are '
                f'resolved from {os.getcwd()!r}).')
        if osp.isdir(path):
            raise ValueError(f'Expected an image file but {path!r} is a directory.')
        from PIL import UnidentifiedImageError

        from dino_mm.utils.image_bits import open_image_8bit
        try:
            with open(path, 'rb') as f:
                data = f.read()
            # 16-bit PNGs / TIFFs are scaled to 8 bits (PIL alone would clip them to 255)
            array = np.asarray(open_image_8bit(data).convert('RGB'))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(
                f'Cannot read {path!r} as an image ({type(err).__name__}: {err}). Give a '
                f'file in a format PIL reads (one of {", ".join(IMAGE_EXTENSIONS)}).'
            ) from err
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f'Image {label} must have shape (H, W), (H, W, 3) or (H, W, 4); '
                         f'got {array.shape}.')
    array = array[..., :3]
    if array.dtype == np.uint16:  # the full 16-bit range, as for 16-bit image files
        from dino_mm.utils.image_bits import scale_16_to_8
        array = scale_16_to_8(array)
    elif array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def list_images(folder: str, recursive: bool = True) -> List[str]:
    """List the image files under ``folder`` (sorted, so every rank sees the same order).

    Args:
        folder (str): A directory.
        recursive (bool): Descend into sub-directories. Defaults to True.

    Returns:
        list[str]: Paths of files whose extension is an image extension.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Image folder not found: {folder!r}.')
    found = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            found.extend(osp.join(root, f) for f in files
                         if f.lower().endswith(IMAGE_EXTENSIONS))
    else:
        found = [osp.join(folder, f) for f in os.listdir(folder)
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
    found.sort()
    if not found:
        raise ValueError(f'No image files ({", ".join(IMAGE_EXTENSIONS)}) found in '
                         f'{folder!r}{" (searched recursively)" if recursive else ""}.')
    return found


def patch_grid_size(height: int, width: int, size: Optional[int], patch_size: int,
                    name: str = 'image') -> Tuple[int, int]:
    """The (rows, cols) patch grid an image is resized to.

    ``size`` is the target length of the *shorter* side (``None`` keeps the image size);
    both sides are then rounded down to a whole number of patches, so the aspect ratio is
    kept up to one patch.

    Args:
        height (int): Image height in pixels.
        width (int): Image width in pixels.
        size (int, optional): Target shorter side in pixels.
        patch_size (int): Backbone patch size.
        name (str): Used in error messages. Defaults to 'image'.

    Returns:
        tuple[int, int]: Number of patch rows and columns (each >= 1).
    """
    if height < patch_size or width < patch_size:
        raise ValueError(
            f'{name} is {height}x{width} pixels, smaller than one {patch_size}x{patch_size} '
            f'patch; give an image at least {patch_size} pixels on each side.')
    if size is not None and size < patch_size:
        raise ValueError(f'size={size} is smaller than the patch size {patch_size}.')
    if size is None:
        scale = 1.0
    else:
        scale = size / min(height, width)
    rows = max(1, int(round(height * scale)) // patch_size)
    cols = max(1, int(round(width * scale)) // patch_size)
    return rows, cols


def to_tensor(image: np.ndarray, grid: Tuple[int, int], patch_size: int,
              mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Resize an RGB uint8 image to ``grid * patch_size`` pixels and normalise it.

    Args:
        image (np.ndarray): uint8 (H, W, 3).
        grid (tuple[int, int]): Patch rows and columns.
        patch_size (int): Patch size.
        mean (Sequence[float]): Per-channel mean on the 0-1 scale. Defaults to ImageNet.
        std (Sequence[float]): Per-channel std on the 0-1 scale. Defaults to ImageNet.

    Returns:
        torch.Tensor: float32 (3, rows * patch, cols * patch).
    """
    out_h, out_w = grid[0] * patch_size, grid[1] * patch_size
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    if x.shape[1:] != (out_h, out_w):
        # bicubic + antialias is the resize the official inference transforms use.
        x = F.interpolate(x[None], size=(out_h, out_w), mode='bicubic', antialias=True,
                          align_corners=False)[0].clamp_(0, 1)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(3, 1, 1)
    return (x - mean_t) / std_t


def upsample_map(values: np.ndarray, height: int, width: int,
                 mode: str = 'bilinear') -> np.ndarray:
    """Upsample a per-patch map (h, w) or (h, w, C) to (height, width[, C])."""
    arr = np.asarray(values, dtype=np.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[..., None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    kwargs = {} if mode == 'nearest' else {'align_corners': False}
    t = F.interpolate(t, size=(height, width), mode=mode, **kwargs)[0].permute(1, 2, 0)
    out = t.numpy()
    return out[..., 0] if squeeze else out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float [0, 1] image to uint8."""
    return np.clip(np.round(np.asarray(rgb) * 255.0), 0, 255).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate uint8 RGB panels horizontally (top-aligned, white gaps)."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for panel in panels:
        canvas[:panel.shape[0], x:x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return canvas


def save_png(image: np.ndarray, path: str) -> str:
    """Write a uint8 RGB image as PNG (creating parent folders); returns the path."""
    from PIL import Image
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(path, format='PNG')
    return path


def overlay_mask(image: np.ndarray, prob: np.ndarray, color: Sequence[int] = (255, 0, 0),
                 alpha: float = 0.5, threshold: float = 0.5) -> np.ndarray:
    """Tint pixels whose probability exceeds ``threshold`` with ``color``."""
    out = image.astype(np.float32).copy()
    sel = prob > threshold
    out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(color, dtype=np.float32)
    return out.round().astype(np.uint8)


def heatmap(prob: np.ndarray) -> np.ndarray:
    """A [0, 1] map drawn with matplotlib's 'viridis' colour map, as uint8 RGB."""
    from matplotlib import colormaps
    rgba = colormaps['viridis'](np.clip(prob, 0, 1))
    return to_uint8(rgba[..., :3])


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, points_a: np.ndarray,
                 points_b: np.ndarray, gap: int = 4, line_width: int = 1,
                 radius: int = 2) -> np.ndarray:
    """Draw correspondences as coloured lines across a side-by-side canvas.

    Args:
        image_a (np.ndarray): uint8 (Ha, Wa, 3).
        image_b (np.ndarray): uint8 (Hb, Wb, 3).
        points_a (np.ndarray): (M, 2) pixel coordinates (x, y) in ``image_a``.
        points_b (np.ndarray): (M, 2) pixel coordinates (x, y) in ``image_b``.
        gap (int): Gap between the images in pixels. Defaults to 4.
        line_width (int): Line width. Defaults to 1.
        radius (int): Radius of the end-point dots. Defaults to 2.

    Returns:
        np.ndarray: uint8 canvas.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(side_by_side([image_a, image_b], gap=gap))
    draw = ImageDraw.Draw(canvas)
    offset = image_a.shape[1] + gap
    n = len(points_a)
    cmap = colormaps['hsv']
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(points_a, points_b)):
        color = tuple(int(c * 255) for c in cmap(i / max(n, 1))[:3])
        xb = xb + offset
        draw.line([(xa, ya), (xb, yb)], fill=color, width=line_width)
        for x, y in ((xa, ya), (xb, yb)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    return np.asarray(canvas)
