"""``images``: :func:`imgedit.media.images.decode_image` and :func:`imgedit.media.masking.decode_mask`.

The input is an image file (the seeds: tiny PNG, JPEG, WebP, GIF, BMP and
TIFF files, some with alpha, 16-bit samples, palettes, EXIF rotation, several
frames). Its last byte also picks the pixel limit and the first image's size the
mask is checked against, so that a seed stays a valid file (trailing bytes are
ignored by every format here) while the fuzzer can still steer both.

Correct outcomes: a RequestError naming the field; or an upright RGB image within
the pixel limit, whose alpha (when kept) is an ``L`` image of its size; and a mask
region that is an ``L`` image of the first image's size marking something to edit.
"""

from __future__ import annotations

from PIL import Image

from fuzz.outcome import expect, refused
from imgedit.media.images import InputImage, decode_image
from imgedit.media.masking import decode_mask
from imgedit.media.sizing import Size

INSTRUMENT = ("imgedit", "fuzz", "PIL")
DRIVES = ("imgedit.media.images.decode_image", "imgedit.media.masking.decode_mask")
#: Pixel limits: absurdly small ones reach the refusals, the largest lets small files decode.
MAX_PIXELS = (1, 64, 4096, 1 << 20)
PARAM = "image[0]"


def fuzz_one(data: bytes) -> None:
    control = data[-1] if data else 0
    max_pixels = MAX_PIXELS[control & 3]
    image = refused(lambda: decode_image(data, PARAM, max_pixels))
    if image is not None:
        _check_image(image, max_pixels)
    sizes = (image.size if image is not None else Size(1, 1), Size(1, 1), Size(8, 8), Size(64, 48))
    first = sizes[(control >> 2) & 3]
    region = refused(lambda: decode_mask(data, first, max_pixels))
    if region is not None:
        expect(region.mode == "L", "a mask region is an L image", region.mode)
        expect(Size(*region.size) == first, "a mask region is the first image's size", (region.size, first))
        expect(region.getextrema()[1] == 255, "a mask region marks something to edit", region.getextrema())
        expect(sum(region.histogram()[1:255]) == 0, "a mask region is 0 or 255")


def _check_image(image: InputImage, max_pixels: int) -> None:
    expect(isinstance(image.rgb, Image.Image) and image.rgb.mode == "RGB", "a decoded image is RGB", image.rgb.mode)
    width, height = image.rgb.size
    expect(width >= 1 and height >= 1 and width * height <= max_pixels, "a decoded image is within max_pixels")
    expect(image.param == PARAM, "a decoded image keeps its param", image.param)
    if image.alpha is not None:
        expect(image.alpha.mode == "L", "a kept alpha is an L image", image.alpha.mode)
        expect(image.alpha.size == image.rgb.size, "a kept alpha is the image's size", image.alpha.size)
