from __future__ import annotations

import io

import pytest
from PIL import Image

from imgedit.errors import RequestError
from imgedit.media.masking import decode_mask, fit, keep_outside
from imgedit.media.sizing import Size
from tests.helpers import Refused, status_of


def mask_png(size=(64, 48), hole=(0, 0, 32, 48), mode="RGBA", fmt="PNG") -> bytes:
    image = Image.new(mode, size, (0, 0, 0, 255) if mode == "RGBA" else 0)
    if mode == "RGBA":
        image.paste((0, 0, 0, 0), hole)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


FIRST = Size(64, 48)


def mask_error(data: bytes, first: Size = FIRST) -> RequestError:
    with pytest.raises(Refused) as caught:
        decode_mask(data, first, 10_000_000)
    assert (status_of(caught.value), caught.value.param) == (400, "mask")
    return caught.value


def test_transparent_pixels_are_the_edit_region():
    region = decode_mask(mask_png(), Size(64, 48), 10_000_000)
    assert region.mode == "L" and region.size == (64, 48)
    assert region.getpixel((5, 5)) == 255 and region.getpixel((40, 5)) == 0


def test_only_fully_transparent_pixels_are_edited():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    region = decode_mask(buffer.getvalue(), Size(8, 8), 1000)
    assert region.getpixel((0, 0)) == 255 and region.getpixel((1, 1)) == 0


def test_webp_masks_with_alpha_work_too():
    assert decode_mask(mask_png(fmt="WEBP"), Size(64, 48), 10_000_000).getpixel((5, 5)) == 255


def test_size_mismatch_is_refused():
    assert "64x48" in mask_error(mask_png(size=(64, 64)), first=Size(64, 48)).message


def test_mask_without_alpha_is_refused():
    assert "alpha" in mask_error(mask_png(mode="L")).message


@pytest.mark.parametrize("data", [b"", b"not an image", mask_png()[:40]])
def test_undecodable_masks_are_refused(data):
    mask_error(data)


def test_a_mask_with_nothing_to_edit_is_refused():
    assert "nothing to edit" in mask_error(mask_png(hole=(0, 0, 0, 0))).message


def test_fit_resizes_only_when_needed():
    image = Image.new("RGB", (10, 10))
    assert fit(image, Size(10, 10)) is image
    assert fit(image, Size(20, 12)).size == (20, 12)


def test_keep_outside_pastes_the_original_back_with_a_soft_edge():
    edited = Image.new("RGB", (100, 100), (255, 0, 0))
    original = Image.new("RGB", (50, 50), (0, 0, 255))
    region = Image.new("L", (50, 50), 0)
    region.paste(255, (0, 0, 25, 50))  # edit the left half
    result = keep_outside(edited, original, region)
    assert result.size == (100, 100)
    assert result.getpixel((10, 50)) == (255, 0, 0)  # deep inside: the edit
    assert result.getpixel((90, 50)) == (0, 0, 255)  # far outside: the original
    red, _, blue = result.getpixel((50, 50))  # on the edge: a blend
    assert 0 < red < 255 and 0 < blue < 255
