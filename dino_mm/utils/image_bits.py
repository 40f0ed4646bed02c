"""Decode 16-bit images to 8 bits by their full range.

PIL opens a 16-bit grayscale PNG or TIFF in mode ``'I;16'`` (``'I'`` in older Pillow),
and ``convert('L')`` / ``convert('RGB')`` then *clip* the values to 255 instead of
scaling them, so a normal photograph comes out as an almost pure {0, 255} image. For
16-bit colour PNGs PIL keeps the high byte (``v >> 8``). Here every 16-bit sample
``v`` becomes ``round(v * 255 / 65535)`` -- the same value for a grey image stored as
16-bit grayscale and as 16-bit RGB -- and 8-bit images decode exactly as
``PIL.Image.open`` does.

Only image *inputs* go through this module. Depth maps (16-bit PNGs whose raw values
are millimetres or depth * 256) are read raw by ``dino_mm.LoadDepthMap``.
"""
import io

import numpy as np
from PIL import Image

__all__ = ['HIGH_BIT_DEPTH_MODES', 'scale_16_to_8', 'open_image_8bit']

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_16BIT_MODES = frozenset({'I;16', 'I;16L', 'I;16B', 'I;16N'})
# Target modes that keep more than 8 bits: asking for them keeps the raw values.
HIGH_BIT_DEPTH_MODES = frozenset({'I', 'F'}) | _16BIT_MODES


def scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` as uint8 for integer samples ``0 <= v <= 65535``.

    ``v * 255 / 65535 = v / 257`` is never exactly halfway between two integers, so
    the integer form below rounds exactly like ``np.round``.
    """
    v = np.asarray(values).astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _is_16bit_colour_png(data: bytes) -> bool:
    # IHDR is the first chunk: bytes 24 and 25 hold the bit depth and the colour type
    # (2 = RGB, 4 = grey + alpha, 6 = RGBA).
    return (len(data) > 25 and data[:8] == _PNG_SIGNATURE and data[12:16] == b'IHDR'
            and data[24] == 16 and data[25] in (2, 4, 6))


def _decode_16bit_colour_png(data: bytes) -> Image.Image:
    import cv2
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 3:
        raise OSError('cannot decode this 16-bit colour PNG (truncated or corrupt data)')
    # OpenCV returns BGR / BGRA (grey + alpha is expanded to BGRA).
    order = [2, 1, 0] if array.shape[-1] == 3 else [2, 1, 0, 3]
    array = np.ascontiguousarray(scale_16_to_8(array[..., order]))
    return Image.fromarray(array, 'RGB' if array.shape[-1] == 3 else 'RGBA')


def open_image_8bit(data: bytes) -> Image.Image:
    """Decode encoded image bytes to a fully loaded PIL image with 8-bit samples.

    16-bit grayscale images (PIL modes ``'I;16*'``, and ``'I'`` from a PNG, which has
    at most 16 bits per sample) become mode ``'L'``; 16-bit RGB / RGBA / grey + alpha
    PNGs become ``'RGB'`` / ``'RGBA'``; each sample scaled by
    :func:`scale_16_to_8`. Other images are returned as PIL decodes them (call
    ``convert(mode)`` on the result as usual).

    Raises:
        PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError: As
            ``PIL.Image.open(...).load()`` for data that is not a readable image.
    """
    if _is_16bit_colour_png(data):
        try:
            return _decode_16bit_colour_png(data)
        except ImportError:  # no OpenCV: PIL's own decoding keeps the high byte
            pass
    img = Image.open(io.BytesIO(data))
    img.load()  # the full decode, so truncated files fail here
    if img.mode in _16BIT_MODES or (img.mode == 'I' and img.format == 'PNG'):
        return Image.fromarray(scale_16_to_8(np.asarray(img)), 'L')
    return img
