"""imgedit.media.png: the PNG writer's files decode, with Pillow, to exactly the pixels written."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgedit.media.png import encode_png, supports

CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


def random_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, CHANNELS[mode]), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


@pytest.mark.parametrize("mode", sorted(CHANNELS))
@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 7), (7, 1), (64, 33)])
def test_round_trips_exactly(mode: str, width: int, height: int) -> None:
    image = random_image(mode, width, height)
    decoded = Image.open(io.BytesIO(encode_png(image)))
    assert (decoded.mode, decoded.size) == (mode, (width, height))
    assert decoded.tobytes() == image.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(sorted(CHANNELS)),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    level=st.integers(0, 9),
)
def test_any_image_at_any_level_round_trips(mode: str, width: int, height: int, seed: int, level: int) -> None:
    image = random_image(mode, width, height, seed)
    assert Image.open(io.BytesIO(encode_png(image, level))).tobytes() == image.tobytes()


def test_the_file_is_well_formed() -> None:
    """Signature, IHDR first with 8-bit depth, checksums right (Pillow's verify checks them), IEND last."""
    data = encode_png(random_image("RGBA", 10, 4))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()
    length, kind = struct.unpack(">I4s", data[8:16])
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    assert (length, kind, width, height, depth, colour_type) == (13, b"IHDR", 10, 4, 8, 6)
    assert data.endswith(b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def test_rows_below_the_first_use_the_up_filter() -> None:
    data = encode_png(Image.new("RGB", (3, 3), (10, 20, 30)))
    start = data.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", data[start - 8 : start - 4])
    scanlines = zlib.decompress(data[start : start + length])
    assert [scanlines[row * 10] for row in range(3)] == [0, 2, 2]
    assert scanlines[11:20] == bytes(9)  # identical rows filter to zeros, which run-length coding packs well


def test_other_modes_are_refused() -> None:
    assert not supports(Image.new("P", (2, 2)))
    with pytest.raises(ValueError, match="mode P"):
        encode_png(Image.new("P", (2, 2)))
