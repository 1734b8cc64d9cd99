"""Property-based tests (hypothesis) of size, number and multipart parsing."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgedit.errors import ApiError
from imgedit.multipart import MultipartLimits, read_multipart
from imgedit.request import MAX_SEED, RequestLimits, parse_edit_request
from imgedit.sizing import MIN_SIDE, Size, SizeLimits, output_size, parse_size
from tests.helpers import form, multipart_body

LIMITS = SizeLimits(max_side=4096, max_pixels=2048 * 2048)
REQUEST_LIMITS = RequestLimits(max_images=4, max_prompt_chars=1000, size=LIMITS, model_names=("m",))
sides = st.integers(min_value=1, max_value=20_000)
multiples = st.sampled_from([8, 16, 32, 64])


@given(width=sides, height=sides, separator=st.sampled_from(["x", "X", " x ", "X "]))
def test_parse_size_accepts_exactly_the_sizes_within_limits(width, height, separator):
    text = f"{width}{separator}{height}"
    fits = (
        MIN_SIDE <= width <= LIMITS.max_side
        and MIN_SIDE <= height <= LIMITS.max_side
        and width * height <= LIMITS.max_pixels
    )
    try:
        parsed = parse_size(text, LIMITS)
    except ApiError as error:
        assert not fits and error.status == 400 and error.param == "size"
    else:
        assert fits and parsed == Size(width, height)


@given(text=st.text(max_size=30))
def test_parse_size_never_crashes(text):
    try:
        parse_size(text, LIMITS)
    except ApiError as error:
        assert error.param == "size"


@given(width=sides, height=sides, multiple=multiples, auto=st.booleans())
def test_output_sizes_are_multiples_within_limits(width, height, multiple, auto):
    requested = None if auto else Size(min(max(width, MIN_SIDE), 2048), min(max(height, MIN_SIDE), 2048))
    size = output_size(requested, Size(width, height), multiple, LIMITS)
    assert size.width % multiple == 0 and size.height % multiple == 0
    assert size.width >= MIN_SIDE and size.height >= MIN_SIDE
    assert max(size.width, size.height) <= LIMITS.max_side and size.pixels <= LIMITS.max_pixels
    if requested is not None:  # rounding moves each side by less than one multiple
        assert abs(size.width - requested.width) < multiple and abs(size.height - requested.height) < multiple


@given(value=st.integers(min_value=-(2**70), max_value=2**70), padding=st.sampled_from(["", " ", "+"]))
def test_seed_parses_exactly_the_64_bit_unsigned_integers(value, padding):
    text = f"{padding}{value}" if value >= 0 or padding != "+" else str(value)
    try:
        request = parse_edit_request(form(("image", b"x"), ("prompt", "p"), ("seed", text)), REQUEST_LIMITS)
    except ApiError as error:
        assert not 0 <= value <= MAX_SEED and error.param == "seed"
    else:
        assert 0 <= value <= MAX_SEED and request.seed == value


@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)))
def test_guidance_is_a_finite_number_from_0_to_20_or_a_400(value):
    text = repr(value) if isinstance(value, float) else value
    try:
        request = parse_edit_request(form(("image", b"x"), ("prompt", "p"), ("guidance_scale", text)), REQUEST_LIMITS)
    except ApiError as error:
        assert error.status == 400 and error.param == "guidance_scale"
    else:
        assert request.guidance_scale is None or 0 <= request.guidance_scale <= 20


parts = st.lists(
    st.tuples(
        st.sampled_from(["image", "image[]", "prompt", "n", "url[]", "x-y"]),
        st.binary(max_size=300),
        st.one_of(st.none(), st.sampled_from(["a.png", "b", "dir/c.webp"])),
    ),
    max_size=8,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(parts=parts, chunk=st.integers(min_value=1, max_value=97))
def test_multipart_round_trips_in_any_chunking(parts, chunk):
    boundary = "imgedit-hypothesis-boundary-7f3a"
    parts = [(name, data.replace(boundary.encode(), b""), filename) for name, data, filename in parts]
    body, content_type = multipart_body(parts, boundary=boundary)

    async def stream():
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    limits = MultipartLimits(max_body_bytes=10**6, max_parts=10, part_bytes=lambda name: 10**6)
    parsed = asyncio.run(read_multipart(content_type, str(len(body)), stream(), limits))
    assert [(part.name, part.data, part.filename) for part in parsed.parts] == parts


@settings(deadline=None)
@given(body=st.binary(max_size=400), chunk=st.integers(min_value=1, max_value=50))
def test_multipart_garbage_is_a_4xx_never_a_crash(body, chunk):
    async def stream():
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    limits = MultipartLimits(max_body_bytes=10**6, max_parts=10, part_bytes=lambda name: 1000)
    try:
        asyncio.run(read_multipart("multipart/form-data; boundary=zz", None, stream(), limits))
    except ApiError as error:
        assert 400 <= error.status < 500
