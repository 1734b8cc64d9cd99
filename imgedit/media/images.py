"""Decode input image bytes into what pipelines need: an upright RGB image.

The format is detected from the bytes (never from a filename or content type);
PNG, JPEG, WebP, BMP, TIFF and GIF are accepted, and animated images give their
first frame. The pixel count is checked from the header before any pixel is
decoded, so a small file that declares a huge image is refused cheaply.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from imgedit.errors import RequestError, invalid
from imgedit.media.sizing import Size

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_ACCEPTED_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
_WHITE = (255, 255, 255, 255)
T = TypeVar("T")


@dataclass(frozen=True)
class InputImage:
    """A decoded input image.

    Attributes:
        rgb: mode ``RGB``, EXIF orientation applied; transparent pixels are
            composited onto white, which is what edit models expect.
        alpha: mode ``L`` alpha channel of the original, or None when the image
            had no transparency (kept for ``background``).
        param: the request field it came from (``image[0]``, ``url[1]``...),
            which errors about this image name.
    """

    rgb: Image.Image
    alpha: Image.Image | None
    param: str = "image"

    @property
    def size(self) -> Size:
        return Size(*self.rgb.size)


def decode_image(data: bytes, param: str, max_pixels: int) -> InputImage:
    """Decode one input image.

    Args:
        data: the raw file bytes.
        param: the request field it came from, for errors (``"image[0]"``).
        max_pixels: the largest width x height accepted.

    Raises:
        RequestError: with ``param`` when the bytes are empty, not an accepted
            format, corrupt or truncated, or declare too many pixels.
    """
    return open_image(data, param, max_pixels, lambda image: _to_input_image(image, param))


def open_image(data: bytes, param: str, max_pixels: int, convert: Callable[[Image.Image], T]) -> T:
    """Decode ``data`` (upright, first frame) and hand it to ``convert``; errors as for :func:`decode_image`."""
    if not data:
        raise invalid(param, f"The image in '{param}' is empty.", code="invalid_image")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, max_pixels) from None
    except MemoryError:
        raise
    except Exception:  # UnidentifiedImageError, or a plugin choking on a malformed header
        raise invalid(
            param,
            f"The file in '{param}' is not a supported image ({_ACCEPTED_NAMES}).",
            code="invalid_image_format",
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise invalid(param, f"The image in '{param}' has no pixels.", code="invalid_image")
    if width * height > max_pixels:
        raise _too_many_pixels(param, max_pixels, f"{width}x{height}")
    try:
        image.load()
        # In place: the default returns a full copy even when nothing turns, and a 20 MP copy is 60 MB.
        ImageOps.exif_transpose(image, in_place=True)
        return convert(image)
    except (MemoryError, RequestError):
        raise
    except Exception:  # Pillow's decoders raise many kinds (struct.error from bad EXIF, for one)
        raise invalid(param, f"The image in '{param}' is truncated or corrupt.", code="invalid_image") from None


def has_transparency(image: Image.Image) -> bool:
    """Whether the mode or metadata gives ``image`` an alpha channel."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _too_many_pixels(param: str, max_pixels: int, size: str = "") -> RequestError:
    declared = f" ({size})" if size else ""
    return invalid(
        param,
        f"The image in '{param}' is too large{declared}; at most {max_pixels} pixels are accepted.",
        code="image_too_large",
    )


def _to_input_image(image: Image.Image, param: str) -> InputImage:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        image = _to_8bit(image)
    if not has_transparency(image):
        # convert() copies even when the mode already matches.
        return InputImage(rgb=image if image.mode == "RGB" else image.convert("RGB"), alpha=None, param=param)
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return InputImage(rgb=rgba.convert("RGB"), alpha=None, param=param)
    background = Image.new("RGBA", rgba.size, _WHITE)
    return InputImage(rgb=Image.alpha_composite(background, rgba).convert("RGB"), alpha=alpha, param=param)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit and float grey images into 0..255 instead of clipping them."""
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    elif peak > 255.0:
        values = values / 257.0
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), mode="L")
