from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgedit.media.sizing import MIN_SIDE, Size, SizeLimits, output_size, parse_size
from tests.helpers import Refused, status_of

LIMITS = SizeLimits(max_side=4096, max_pixels=2048 * 2048)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", None),
        ("AUTO", None),
        ("1024x1024", Size(1024, 1024)),
        ("512X768", Size(512, 768)),
        (" 64 x 64 ", Size(64, 64)),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text, LIMITS) == expected


@pytest.mark.parametrize(
    "text", ["1024x", "x1024", "1024*1024", "big", "-64x64", "63x64", "64x4097", "4096x4096", "1e3x64"]
)
def test_parse_size_rejects(text):
    with pytest.raises(Refused) as caught:
        parse_size(text, LIMITS)
    assert (status_of(caught.value), caught.value.param) == (400, "size")


@pytest.mark.parametrize(
    ("requested", "first_input", "multiple", "expected"),
    [
        (Size(1024, 1024), Size(10, 10), 16, Size(1024, 1024)),
        (Size(1000, 750), Size(10, 10), 16, Size(1008, 752)),
        (Size(100, 70), Size(10, 10), 16, Size(96, 64)),
        (None, Size(1000, 750), 16, Size(1008, 752)),
        (None, Size(80, 60), 8, Size(88, 64)),  # raised to the smallest side at 4:3, not 80x64
        (None, Size(10, 10), 16, Size(64, 64)),
        (None, Size(4000, 3000), 16, Size(2352, 1760)),
        (None, Size(8000, 100), 16, Size(4096, 64)),
    ],
)
def test_output_size_rounds_to_the_multiple_within_limits(requested, first_input, multiple, expected):
    size = output_size(requested, first_input, multiple, LIMITS)
    assert size == expected
    assert size.width % multiple == 0 and size.height % multiple == 0
    assert size.pixels <= LIMITS.max_pixels and max(size.width, size.height) <= LIMITS.max_side


def test_rounding_never_crosses_the_pixel_cap():
    limits = SizeLimits(max_side=4096, max_pixels=1000 * 1000)
    size = output_size(Size(1000, 1000), Size(1, 1), 16, limits)
    assert size == Size(992, 992)


# -- properties -------------------------------------------------------------------------------

PROPERTY_LIMITS = SizeLimits(max_side=4096, max_pixels=2048 * 2048)
sides = st.integers(min_value=1, max_value=20_000)
multiples = st.sampled_from([8, 16, 32, 64])


@given(width=sides, height=sides, separator=st.sampled_from(["x", "X", " x ", "X "]))
def test_parse_size_accepts_exactly_the_sizes_within_limits(width, height, separator):
    text = f"{width}{separator}{height}"
    fits = (
        MIN_SIDE <= width <= PROPERTY_LIMITS.max_side
        and MIN_SIDE <= height <= PROPERTY_LIMITS.max_side
        and width * height <= PROPERTY_LIMITS.max_pixels
    )
    try:
        parsed = parse_size(text, PROPERTY_LIMITS)
    except Refused as error:
        assert not fits and status_of(error) == 400 and error.param == "size"
    else:
        assert fits and parsed == Size(width, height)


@given(text=st.text(max_size=30))
def test_parse_size_never_crashes(text):
    try:
        parse_size(text, PROPERTY_LIMITS)
    except Refused as error:
        assert error.param == "size"


@given(width=sides, height=sides, multiple=multiples, auto=st.booleans())
def test_output_sizes_are_multiples_within_limits(width, height, multiple, auto):
    requested = None if auto else Size(min(max(width, MIN_SIDE), 2048), min(max(height, MIN_SIDE), 2048))
    size = output_size(requested, Size(width, height), multiple, PROPERTY_LIMITS)
    assert size.width % multiple == 0 and size.height % multiple == 0
    assert size.width >= MIN_SIDE and size.height >= MIN_SIDE
    assert max(size.width, size.height) <= PROPERTY_LIMITS.max_side and size.pixels <= PROPERTY_LIMITS.max_pixels
    if requested is not None:  # rounding moves each side by less than one multiple
        assert abs(size.width - requested.width) < multiple and abs(size.height - requested.height) < multiple


@pytest.mark.parametrize(
    ("first_input", "expected"),
    [
        (Size(4032, 3024), Size(1184, 880)),  # a phone photo: about 1 MP, not 4.2 MP
        (Size(64, 64), Size(1024, 1024)),  # small inputs are scaled up to the native area
        (Size(1000, 250), Size(2048, 512)),  # 4:1 keeps its shape
        (Size(1024, 1024), Size(1024, 1024)),
    ],
)
def test_auto_aims_at_the_native_area_at_the_first_images_aspect(first_input, expected):
    size = output_size(None, first_input, 16, SizeLimits(max_side=4096, max_pixels=2048 * 2048), 1024 * 1024)
    assert size == expected
    assert abs(size.pixels - 1024 * 1024) / (1024 * 1024) < 0.05


def test_auto_native_area_still_keeps_within_the_limits():
    size = output_size(None, Size(8000, 1000), 16, SizeLimits(max_side=2048, max_pixels=2048 * 2048), 1024 * 1024)
    assert size.width == 2048 and size.height == 256


@given(width=sides, height=sides, multiple=multiples, area=st.integers(min_value=64 * 64, max_value=2048 * 2048))
def test_auto_native_sizes_are_multiples_within_limits_near_the_area(width, height, multiple, area):
    size = output_size(None, Size(width, height), multiple, PROPERTY_LIMITS, area)
    assert size.width % multiple == 0 and size.height % multiple == 0
    assert size.width >= MIN_SIDE and size.height >= MIN_SIDE
    assert max(size.width, size.height) <= PROPERTY_LIMITS.max_side and size.pixels <= PROPERTY_LIMITS.max_pixels


@pytest.mark.parametrize(
    ("first_input", "area", "expected"),
    [
        (Size(300, 100), 64 * 64, Size(192, 64)),  # 3:1 on a tiny model: was 112x64, each side raised alone
        (Size(100, 300), 64 * 64, Size(64, 192)),
        (Size(6000, 1000), 1024 * 1024, Size(2048, 336)),  # a panorama keeps 6:1 within max_side
        (Size(120, 40), None, Size(192, 64)),  # and so does an input's own size
    ],
)
def test_auto_raises_both_sides_when_the_smallest_side_binds(first_input, area, expected):
    assert output_size(None, first_input, 16, SizeLimits(max_side=2048, max_pixels=2048 * 2048), area) == expected


def test_auto_gives_up_the_aspect_only_where_the_limits_force_it():
    # 40:1 cannot hold both a 64-pixel short side and a 1024-pixel long side: the limits win.
    assert output_size(None, Size(4000, 100), 16, SizeLimits(max_side=1024, max_pixels=2**20), 64 * 64) == Size(
        1024, 64
    )


@given(width=sides, height=sides, multiple=multiples, area=st.integers(min_value=64 * 64, max_value=2048 * 2048))
def test_auto_keeps_the_aspect_to_within_rounding_wherever_the_limits_allow(width, height, multiple, area):
    size = output_size(None, Size(width, height), multiple, PROPERTY_LIMITS, area)
    smallest = -(-MIN_SIDE // multiple) * multiple
    if max(width, height) / min(width, height) * smallest > PROPERTY_LIMITS.max_side - multiple:
        return  # the limits cannot hold this aspect at the smallest side
    aspect, made = width / height, size.width / size.height
    assert abs(made - aspect) / aspect <= multiple / size.width + multiple / size.height + 1e-9


@pytest.mark.parametrize(
    ("first_input", "multiple", "limits", "area", "expected"),
    [
        # The shorter side raised to 64 left the longer one past max_pixels (found by the fuzzer).
        (Size(4096, 16), 16, SizeLimits(max_side=16384, max_pixels=262144), 1048576, Size(4096, 64)),
        (Size(1, 2), 1, SizeLimits(max_side=14697, max_pixels=4096), 5066281, Size(64, 64)),
    ],
)
def test_the_longer_side_gives_way_when_the_shorter_one_is_raised(first_input, multiple, limits, area, expected):
    assert output_size(None, first_input, multiple, limits, area) == expected
