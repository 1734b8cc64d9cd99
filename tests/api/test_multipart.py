from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgedit.api.multipart import MultipartLimits, read_multipart
from tests.helpers import Refused, multipart_body, status_of

pytestmark = pytest.mark.anyio

LIMITS = MultipartLimits(max_body_bytes=10_000, max_parts=5, part_bytes=lambda name: 4_000 if name == "image" else 100)
LARGE = MultipartLimits(max_body_bytes=100_000, max_parts=5, part_bytes=lambda name: 100)


async def _stream(body: bytes, chunk: int = 7):
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


async def _read(body: bytes, content_type: str, length: str | None = None, limits: MultipartLimits = LIMITS):
    return await read_multipart(content_type, length, _stream(body), limits)


async def test_parts_keep_order_bytes_and_filenames():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3
    body, content_type = multipart_body(
        [("prompt", b"123", None), ("image", png, "a.png"), ("image[]", b"raw", None), ("n", b"2", None)]
    )
    form = await _read(body, content_type)
    assert [(part.name, part.filename) for part in form.parts] == [
        ("prompt", None),
        ("image", "a.png"),
        ("image[]", None),
        ("n", None),
    ]
    assert form.parts[1].data == png
    assert [part.data for part in form.named("image", "image[]")] == [png, b"raw"]


async def test_binary_part_without_filename_stays_bytes():
    data = bytes(range(256))
    body, content_type = multipart_body([("image", data, None)])
    form = await _read(body, content_type)
    assert form.parts[0].data == data


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", None, "multipart/form-data"],
)
async def test_not_multipart_or_no_boundary_is_400(content_type):
    with pytest.raises(Refused) as caught:
        await _read(b"{}", content_type)
    assert status_of(caught.value) == 400


async def test_declared_length_over_the_limit_is_413_before_reading():
    async def never():
        raise AssertionError("the body must not be read")
        yield b""

    _, content_type = multipart_body([("prompt", b"x", None)])
    with pytest.raises(Refused) as caught:
        await read_multipart(content_type, "10001", never(), LIMITS)
    assert status_of(caught.value) == 413


async def test_streamed_body_over_the_limit_is_413():
    body, content_type = multipart_body([("image", b"x" * 3_000, "a")] * 4)
    with pytest.raises(Refused) as caught:
        await _read(body, content_type, length=None)
    assert status_of(caught.value) == 413


async def test_part_over_its_limit_names_the_field():
    body, content_type = multipart_body([("prompt", b"x" * 101, None)])
    with pytest.raises(Refused) as caught:
        await _read(body, content_type)
    assert (status_of(caught.value), caught.value.param) == (413, "prompt")


async def test_too_many_parts_is_400():
    body, content_type = multipart_body([("n", b"1", None)] * 6)
    with pytest.raises(Refused) as caught:
        await _read(body, content_type)
    assert status_of(caught.value) == 400
    assert "more than 5 parts" in caught.value.message


async def test_truncated_body_is_400():
    body, content_type = multipart_body([("prompt", b"hello", None)])
    with pytest.raises(Refused) as caught:
        await _read(body[:-10], content_type)
    assert status_of(caught.value) == 400


async def test_garbage_body_is_400():
    with pytest.raises(Refused) as caught:
        await _read(b"this is not multipart at all", "multipart/form-data; boundary=abc")
    assert status_of(caught.value) == 400


@pytest.mark.parametrize("length", [257, 5000])
async def test_a_boundary_longer_than_the_parser_takes_is_400(length):
    # python-multipart refuses it when the parser is made; that used to escape as a 500.
    boundary = "b" * length
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\np\r\n--{boundary}--\r\n'
    with pytest.raises(Refused) as caught:
        await _read(body.encode(), f"multipart/form-data; boundary={boundary}", limits=LARGE)
    assert (status_of(caught.value), caught.value.code) == (400, "invalid_multipart")
    assert f"{length} bytes long" in caught.value.message


async def test_a_boundary_of_256_bytes_is_read():
    boundary = "b" * 256
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\np\r\n--{boundary}--\r\n'
    form = await _read(body.encode(), f"multipart/form-data; boundary={boundary}", limits=LARGE)
    assert form.named("prompt")[0].data == b"p"


@pytest.mark.parametrize("preamble", [b"", b"\n", b"\r\n", b"\nx", b"junk before the form\r\n"])
@pytest.mark.parametrize("chunk", [1, 2, 7, 4096])
async def test_a_preamble_is_skipped_in_any_chunking(preamble, chunk):
    # python-multipart read "\nx--b..." whole but refused it one byte at a time (found by the fuzzer).
    body = preamble + b'--b0undary\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b0undary--\r\n'
    form = await read_multipart("multipart/form-data; boundary=b0undary", None, _stream(body, chunk), LIMITS)
    assert [(part.name, part.data) for part in form.parts] == [("prompt", b"x")]


async def test_part_without_a_name_is_400():
    body = b'--b\r\nContent-Disposition: form-data; filename="x"\r\n\r\ndata\r\n--b--\r\n'
    with pytest.raises(Refused) as caught:
        await _read(body, "multipart/form-data; boundary=b")
    assert status_of(caught.value) == 400


async def test_a_body_that_stalls_is_cut_off():
    body, content_type = multipart_body([("prompt", b"hello", None)])

    async def stalls():
        yield body[:10]
        await asyncio.sleep(5)
        yield body[10:]

    limits = MultipartLimits(
        max_body_bytes=10_000, max_parts=5, part_bytes=lambda name: 100, idle_seconds=0.2, total_seconds=10
    )
    with pytest.raises(Refused) as caught:
        await read_multipart(content_type, None, stalls(), limits)
    assert status_of(caught.value) == 408


async def test_a_body_that_trickles_too_long_is_cut_off():
    body, content_type = multipart_body([("prompt", b"x" * 50, None)])

    async def trickles():
        for byte in body:
            await asyncio.sleep(0.02)
            yield bytes([byte])

    limits = MultipartLimits(
        max_body_bytes=10_000, max_parts=5, part_bytes=lambda name: 100, idle_seconds=1, total_seconds=0.3
    )
    with pytest.raises(Refused) as caught:
        await read_multipart(content_type, None, trickles(), limits)
    assert status_of(caught.value) == 408 and "too slowly" in caught.value.message


# -- properties -------------------------------------------------------------------------------

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
    except Refused as error:
        assert 400 <= status_of(error) < 500
