from __future__ import annotations

import io

import pytest
from PIL import Image

from imgedit.media.encode import EncodeOptions, encode_image, resolve_background
from tests.helpers import decode


def noisy(size=(32, 32)) -> Image.Image:
    image = Image.effect_noise(size, 60).convert("RGB")
    return image


def test_resolve_background():
    alpha = Image.new("L", (4, 4), 0)
    assert resolve_background("auto", alpha, "png") == "transparent"
    assert resolve_background("auto", alpha, "webp") == "transparent"
    assert resolve_background("auto", alpha, "jpeg") == "opaque"
    assert resolve_background("auto", None, "png") == "opaque"
    assert resolve_background("opaque", alpha, "png") == "opaque"
    assert resolve_background("transparent", None, "png") == "transparent"


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_formats_and_opaque_output(fmt, pil_format):
    data = encode_image(noisy(), None, EncodeOptions(fmt, 90, "opaque"))
    image = decode(data)
    assert image.format == pil_format
    assert image.mode == "RGB"
    assert image.size == (32, 32)


def test_png_is_lossless():
    source = noisy()
    assert list(decode(encode_image(source, None, EncodeOptions("png", 1, "opaque"))).getdata()) == list(
        source.getdata()
    )


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_compression_is_the_lossy_quality(fmt):
    source = noisy((128, 128))
    small = encode_image(source, None, EncodeOptions(fmt, 10, "opaque"))
    large = encode_image(source, None, EncodeOptions(fmt, 95, "opaque"))
    assert len(small) < len(large)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_copies_the_first_inputs_alpha_resized(fmt):
    alpha = Image.new("L", (16, 16), 255)
    alpha.paste(0, (0, 0, 8, 16))  # left half transparent
    image = decode(encode_image(noisy(), alpha, EncodeOptions(fmt, 100, "transparent")))
    assert image.mode == "RGBA"
    assert image.getpixel((2, 16))[3] == 0
    assert image.getpixel((29, 16))[3] == 255


def test_transparent_without_input_alpha_is_fully_opaque_rgba():
    image = decode(encode_image(noisy(), None, EncodeOptions("png", 100, "transparent")))
    assert image.mode == "RGBA"
    assert image.getchannel("A").getextrema() == (255, 255)


def test_png_compress_level_trades_size():
    source = Image.linear_gradient("L").convert("RGB")
    fast = encode_image(source, None, EncodeOptions("png", 100, "opaque", png_compress_level=1))
    small = encode_image(source, None, EncodeOptions("png", 100, "opaque", png_compress_level=9))
    assert len(small) <= len(fast)
    assert Image.open(io.BytesIO(fast)).tobytes() == Image.open(io.BytesIO(small)).tobytes()


def test_the_default_png_level_is_as_small_as_pillows_fastest_on_photographs():
    """Level 1 goes to imgedit.media.png; on photo-like output its file is within 1 % of Pillow's level 1 with RLE."""
    import zlib

    from bench.common import photo_like

    photo = photo_like(256, 256)
    ours = encode_image(photo, None, EncodeOptions("png", 100, "opaque", png_compress_level=1))
    pillow = io.BytesIO()
    photo.save(pillow, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    assert len(ours) < 1.01 * len(pillow.getvalue())
    assert Image.open(io.BytesIO(ours)).tobytes() == photo.tobytes()
