"""Reading the request body: multipart or JSON, within the limits, every failure an OpenAI-shaped 4xx."""

from __future__ import annotations

import json

import pytest

from imgedit.api.body import RawBody, read_body, read_json, read_raw
from imgedit.api.errors import ApiError
from imgedit.api.multipart import Form, read_multipart
from imgedit.config import Settings
from imgedit.errors import RequestError
from imgedit.serving.options import multipart_limits
from tests.helpers import Refused, http_request, multipart_body, status_of

pytestmark = pytest.mark.anyio
LIMITS = multipart_limits(Settings(max_body_bytes=4096))


LARGE = multipart_limits(Settings(max_body_bytes=1024 * 1024))


async def read(body: bytes, content_type: str, chunk_bytes: int = 65536, limits=LIMITS, declare_length=True):
    return await read_body(http_request(body, content_type, chunk_bytes, declare_length), limits)


async def error_of(body: bytes, content_type: str, **options) -> ApiError | RequestError:
    with pytest.raises(Refused) as caught:
        await read(body, content_type, **options)
    return caught.value


async def test_a_json_object_is_read_in_any_chunking():
    body = json.dumps({"prompt": "p", "n": 2, "images": [{"image_url": "data:,x"}]}).encode()
    for chunk_bytes in (1, 7, 65536):
        assert await read(body, "application/json; charset=utf-8", chunk_bytes) == json.loads(body)


async def test_a_form_is_still_read():
    body, content_type = multipart_body([("prompt", b"p", None)])
    form = await read(body, content_type)
    assert isinstance(form, Form) and form.named("prompt")[0].data == b"p"


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b"{'prompt': 1}", b'{"n": NaN}', b'{"n": Infinity}', b"\xff\xfe{}", b"[" * 3000 + b"]" * 3000],
)
async def test_malformed_json_is_a_400(body):
    error = await error_of(body, "application/json", limits=LARGE)
    assert (status_of(error), error.code) == (400, "invalid_json")
    assert error.message.startswith("The request body is not valid JSON")


@pytest.mark.parametrize("body", [b"[]", b'"prompt"', b"3", b"null", b"true"])
async def test_json_that_is_not_an_object_is_a_400(body):
    error = await error_of(body, "application/json")
    assert (status_of(error), error.code, error.message) == (
        400,
        "invalid_json",
        "The JSON body must be an object of fields.",
    )


async def test_a_number_too_long_to_read_is_a_400():
    error = await error_of(b'{"seed": ' + b"9" * 4400 + b"}", "application/json", limits=LARGE)
    assert (status_of(error), error.code) == (400, "invalid_json")


async def test_an_oversized_json_body_is_a_413_declared_or_streamed():
    body = json.dumps({"prompt": "p" * 5000}).encode()
    declared = await error_of(body, "application/json")
    streamed = await error_of(body, "application/json", chunk_bytes=512, declare_length=False)
    assert (declared.status, streamed.status) == (413, 413)


@pytest.mark.parametrize("declared", ["6\u00b94", "\u0663", "1e3", "-1", " 12", ""])
async def test_a_content_length_that_is_no_plain_number_declares_nothing(declared):
    # str.isdigit takes '\u00b9' and Arabic-Indic digits, which int() refuses; such a length must not fail the read.
    async def chunks(data: bytes):
        yield data

    body = json.dumps({"prompt": "p"}).encode()
    assert await read_json(declared, chunks(body), LIMITS) == {"prompt": "p"}
    form, content_type = multipart_body([("prompt", b"p", None)])
    read = await read_multipart(content_type, declared, chunks(form), LIMITS)
    assert read.named("prompt")[0].data == b"p"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_other_content_types_are_a_400_naming_both(content_type):
    error = await error_of(b"prompt=p", content_type)
    assert (status_of(error), error.code) == (400, "invalid_content_type")
    assert "multipart/form-data or application/json" in error.message


@pytest.mark.parametrize(
    "body, param",
    [
        # A lone surrogate reached the tokenizer and failed there with a 500.
        (b'{"prompt": "red \\ud800 roses"}', "prompt"),
        (b'{"prompt": "p", "images": [{"image_url": "data:image/png,\\udfff"}]}', "images"),
        # An integer beyond a double made the error message itself fail.
        (b'{"prompt": "p", "guidance_scale": 1' + b"0" * 400 + b"}", "guidance_scale"),
    ],
)
async def test_json_a_model_cannot_take_is_a_400_naming_the_field(body, param):
    error = await error_of(body, "application/json", limits=LARGE)
    assert (status_of(error), error.param) == (400, param)


async def test_a_body_read_whole_parses_as_it_would_have_streamed():
    body, content_type = multipart_body([("prompt", b"p", None), ("image", b"\x89PNG", "a.png")])
    raw = await read_raw(http_request(body, content_type, chunk_bytes=5), LIMITS)
    assert raw.data == body and raw.content_type == content_type
    form = await raw.parse(LIMITS)
    assert isinstance(form, Form) and form.named("image")[0].data == b"\x89PNG"
    assert await RawBody("application/json", b'{"prompt": "p"}').parse(LIMITS) == {"prompt": "p"}


async def test_a_body_read_whole_keeps_the_limits():
    assert status_of(await _raw_error(b"x" * 5000, "application/json")) == 413
    assert status_of(await _raw_error(b"x" * 5000, "application/json", declare_length=False)) == 413
    with pytest.raises(Refused) as caught:
        await RawBody("text/plain", b"x").parse(LIMITS)
    assert status_of(caught.value) == 400


async def _raw_error(body: bytes, content_type: str, **options):
    with pytest.raises(Refused) as caught:
        await read_raw(http_request(body, content_type, **options), LIMITS)
    return caught.value


def test_the_fingerprint_ignores_the_boundary_but_nothing_the_request_says():
    parts = [("prompt", b"p", None), ("image", b"\x89PNG", "a.png")]
    first = RawBody(*reversed(multipart_body(parts, boundary="aaaa1111")))
    again = RawBody(*reversed(multipart_body(parts, boundary="bbbb2222")))
    other = RawBody(*reversed(multipart_body([("prompt", b"q", None), parts[1]], boundary="aaaa1111")))
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint() != other.fingerprint()
    assert first.fingerprint("respond-async") != first.fingerprint("respond-sync")
    json_body = RawBody("application/json", b'{"prompt": "p"}')
    assert json_body.fingerprint() != RawBody("application/json", b'{"prompt": "q"}').fingerprint()
    assert json_body.fingerprint() != RawBody("text/plain", b'{"prompt": "p"}').fingerprint()
