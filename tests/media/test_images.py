from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgedit.errors import RequestError
from imgedit.media.images import decode_image
from tests.helpers import Refused, image_bytes, png_declaring, status_of

MAX_PIXELS = 10_000_000


def decode(data: bytes):
    return decode_image(data, "image[0]", MAX_PIXELS)


def error_of(data: bytes, max_pixels: int = MAX_PIXELS) -> RequestError:
    with pytest.raises(Refused) as caught:
        decode_image(data, "image[2]", max_pixels)
    assert status_of(caught.value) == 400
    assert caught.value.param == "image[2]"
    return caught.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt):
    image = decode(image_bytes(40, 30, (10, 200, 30), fmt=fmt))
    assert image.rgb.mode == "RGB"
    assert image.size.width == 40 and image.size.height == 30
    assert image.alpha is None
    red, green, blue = image.rgb.getpixel((5, 5))
    assert green > 150 and red < 60 and blue < 80


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    red, _, blue = decode(buffer.getvalue()).rgb.getpixel((0, 0))
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied():
    source = Image.new("RGB", (40, 20), (255, 0, 0))
    source.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif, quality=95)
    image = decode(buffer.getvalue())
    assert (image.size.width, image.size.height) == (20, 40)
    assert image.rgb.getpixel((10, 2))[2] > 200  # the blue band is now on top


def test_transparency_is_kept_as_alpha_and_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    image = decode(buffer.getvalue())
    assert image.alpha is not None and image.alpha.getpixel((0, 0)) == 0 and image.alpha.getpixel((1, 1)) == 255
    assert image.rgb.getpixel((0, 0)) == (255, 255, 255)
    assert image.rgb.getpixel((1, 1)) == (255, 0, 0)


def test_fully_opaque_alpha_counts_as_none():
    assert decode(image_bytes(8, 8, (1, 2, 3, 255), mode="RGBA")).alpha is None


def test_palette_with_transparency_keeps_alpha():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    image = decode(buffer.getvalue())
    assert image.alpha is not None and image.alpha.getpixel((0, 0)) == 0
    assert image.rgb.getpixel((3, 3)) == (255, 0, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.full((8, 8), 32768, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    assert decode(buffer.getvalue()).rgb.getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_becomes_rgb():
    image = decode(image_bytes(8, 8, (0, 255, 255, 0), mode="CMYK", fmt="JPEG"))
    red, green, blue = image.rgb.getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize(
    "data",
    [
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.4\n%...",
        b"<html><body>not an image</body></html>",
        b"\x00" * 64,
    ],
)
def test_non_images_are_refused(data):
    assert error_of(data).code == "invalid_image_format"


def test_empty_is_refused():
    assert "empty" in error_of(b"").message


@pytest.mark.parametrize(
    ("fmt", "code"),
    [("JPEG", "invalid_image"), ("PNG", "invalid_image"), ("WEBP", "invalid_image_format")],
)
def test_truncated_image_is_refused(fmt, code):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format=fmt)
    data = buffer.getvalue()
    assert error_of(data[: len(data) * 2 // 3]).code == code


@pytest.mark.parametrize(("side", "shown"), [(50_000, ""), (5_000, "5000x5000")])
def test_decompression_bomb_is_refused_from_the_header(side, shown):
    error = error_of(png_declaring(side, side))
    assert error.code == "image_too_large"
    assert shown in error.message


def test_pixel_limit_is_configurable():
    assert error_of(image_bytes(100, 100), max_pixels=9_999).code == "image_too_large"


def test_corrupt_exif_is_a_400_not_a_crash():
    data = (Path(__file__).parents[1] / "data" / "bad_exif.jpg").read_bytes()  # found by mutation fuzzing
    assert error_of(data).code == "invalid_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP"])
def test_mutated_images_decode_or_get_a_400(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6
    extra = {"exif": exif} if fmt in ("JPEG", "PNG", "WEBP") else {}
    buffer = io.BytesIO()
    Image.new("RGB" if fmt != "GIF" else "L", (40, 30), 120).save(buffer, format=fmt, **extra)
    original = buffer.getvalue()
    rng = random.Random(fmt)
    for _ in range(200):
        data = bytearray(original)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            decode_image(bytes(data), "image[0]", MAX_PIXELS)
        except Refused as error:
            assert status_of(error) == 400


def test_animated_webp_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((0, 255, 0), (255, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    red, green, _ = decode(buffer.getvalue()).rgb.getpixel((0, 0))
    assert green > 200 and red < 50
