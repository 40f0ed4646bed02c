"""Image decoding with PIL, as the official DINO datasets do."""
import io
from typing import Optional

from mmengine.fileio import get as fileio_get
from PIL import Image, UnidentifiedImageError

from dino_mm.registry import TRANSFORMS
from dino_mm.utils.image_bits import HIGH_BIT_DEPTH_MODES, open_image_8bit

__all__ = ['CorruptImageError', 'LoadImagePIL', 'decode_image_pil']


class CorruptImageError(OSError):
    """An image file is missing, truncated or not an image.

    Datasets built with ``skip_corrupt=True`` catch exactly this error.
    """


def decode_image_pil(data: bytes, source: str, mode: str = 'RGB') -> Image.Image:
    """Decode encoded image bytes to a fully loaded PIL image in ``mode``.

    16-bit images (grayscale, RGB, RGBA) are scaled to 8 bits by their full range
    (``round(v * 255 / 65535)``, see :mod:`dino_mm.utils.image_bits`) before the
    conversion, instead of PIL clipping them to 255. A 16/32-bit target ``mode``
    (``'I'``, ``'I;16'``, ``'F'``) keeps the raw values.

    Args:
        data (bytes): Encoded image.
        source (str): Where the bytes come from, for the error message.
        mode (str): PIL mode to convert to. Defaults to ``'RGB'``.

    Returns:
        PIL.Image.Image: The decoded image.
    """
    try:
        if mode in HIGH_BIT_DEPTH_MODES:
            img = Image.open(io.BytesIO(data))
        else:
            img = open_image_8bit(data)
        # convert() forces the full decode, so truncated files fail here, not later.
        return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CorruptImageError(
            f'Cannot decode image "{source}" ({type(e).__name__}: {e}). Re-download or '
            'remove the file, or build the dataset with skip_corrupt=True to skip it.') from e


@TRANSFORMS.register_module()
class LoadImagePIL:
    """Load ``results['img_path']`` (or decode ``results['img_bytes']``) to a PIL image.

    Adds ``img`` (PIL image in ``mode``), ``img_shape`` and ``ori_shape`` (``(h, w)``).
    Missing or undecodable files raise :class:`CorruptImageError` naming the file.

    Args:
        mode (str): PIL mode. Defaults to ``'RGB'`` (official: ``convert("RGB")``).
        backend_args (dict, optional): MMEngine file backend arguments.
    """

    def __init__(self, mode: str = 'RGB', backend_args: Optional[dict] = None) -> None:
        self.mode = mode
        self.backend_args = backend_args

    def __call__(self, results: dict) -> dict:
        source = str(results.get('img_path', '<in-memory bytes>'))
        data = results.pop('img_bytes', None)
        if data is None:
            if 'img_path' not in results:
                raise KeyError("LoadImagePIL needs results['img_path'] or results['img_bytes']; "
                               f'got keys {sorted(results)}.')
            try:
                data = fileio_get(results['img_path'], backend_args=self.backend_args)
            except OSError as e:
                raise CorruptImageError(f'Cannot read image file "{source}": {e}') from e
        img = decode_image_pil(data, source, self.mode)
        results['img'] = img
        results['img_shape'] = results['ori_shape'] = (img.height, img.width)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(mode={self.mode!r})'
