"""``fields``: :func:`imgedit.api.parse.parse_edit_request` given forms and JSON objects made directly.

The first byte picks how the rest of the input becomes a body:

* ``{`` or ``j``: JSON text (``json.loads``; input that is no JSON object is skipped);
* ``s``: a dict built value by value: the fields' keys and others, typed values
  that parsers trip on (integers past a double, NaN, lone surrogates, nesting
  thousands deep, wrong types), often around a valid request;
* anything else: a multipart ``Form`` of parts named by the field table (and
  randomly), holding numbers, choices, sizes, URLs, invalid UTF-8 or raw bytes,
  with random limits (max images, prompt length, size limits) half the time.

The bodies skip the readers on purpose: the parser must stand on its own, and
raise nothing but refusals whatever the values. Correct outcomes: a refusal (a
RequestError, or the 422 for no image), or a request that keeps its promises
(:func:`fuzz.checks.check_request`), but for lone surrogates in its texts: the
server's JSON reader refuses those before the parser sees them (``json_body``
checks that).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import atheris

from fuzz.checks import check_request
from fuzz.limits import request_limits
from fuzz.outcome import refused
from fuzz.values import Provider, json_value, key, number, text
from imgedit.api.fields import FIELDS
from imgedit.api.multipart import Form, Part
from imgedit.api.parse import RequestLimits, parse_edit_request
from imgedit.media.sizing import SizeLimits

INSTRUMENT = ("imgedit", "fuzz")
DRIVES = ("imgedit.api.parse.parse_edit_request",)
LIMITS = request_limits()
#: Every part name the table knows, and each field by its key in a JSON body.
PART_NAMES = sorted({name for field in FIELDS for name in field.names})
FIELDS_BY_KEY = {field.key: field for field in FIELDS}
#: A 1x1 PNG, for the image a valid request needs (the parser never decodes it).
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da636060f8ff1f00030201ff39"
    "2919be0000000049454e44ae426082"
)
PIXEL_URL = "data:image/png;base64," + base64.b64encode(PIXEL).decode()


def fuzz_one(data: bytes) -> None:
    if data[:1] in (b"{", b"j"):
        try:
            body = json.loads(data[1:] if data[:1] == b"j" else data)
        except (ValueError, RecursionError):
            return
        if isinstance(body, dict):
            _parse(body, LIMITS)
        return
    provider: Provider = atheris.FuzzedDataProvider(data[1:])
    limits = _limits(provider)
    _parse(_dict(provider) if data[:1] == b"s" else _form(provider), limits)


def _parse(body: Form | dict[str, Any], limits: RequestLimits) -> None:
    parsed = refused(lambda: parse_edit_request(body, limits))
    if parsed is not None:
        check_request(parsed, limits, texts=False)  # lone surrogates are the reader's to refuse


def _limits(data: Provider) -> RequestLimits:
    if data.ConsumeBool():
        return LIMITS
    side = data.ConsumeIntInRange(64, 16_384)
    size = SizeLimits(max_side=side, max_pixels=data.ConsumeIntInRange(64 * 64, side * side))
    return request_limits(
        max_images=data.ConsumeIntInRange(1, 16), max_prompt_chars=data.ConsumeIntInRange(1, 64), size=size
    )


def _form(data: Provider) -> Form:
    valid = [Part("prompt", b"make it blue"), Part("image[]", PIXEL, "a.png", "image/png")]
    parts = valid if data.ConsumeBool() else []
    for _ in range(data.ConsumeIntInRange(0, 12)):
        name = data.PickValueInList(PART_NAMES) if data.ConsumeIntInRange(0, 7) else data.ConsumeUnicodeNoSurrogates(8)
        filename = data.ConsumeUnicodeNoSurrogates(8) if data.ConsumeIntInRange(0, 3) == 0 else None
        parts.append(Part(name, _payload(data), filename))
    return Form(tuple(parts))


def _payload(data: Provider) -> bytes:
    """A part's bytes: text as UTF-8 (a lone surrogate makes it invalid UTF-8), a number, or raw bytes."""
    choice = data.ConsumeIntInRange(0, 3)
    if choice == 0:
        return data.ConsumeBytes(data.ConsumeIntInRange(0, 64))
    if choice == 1:
        return repr(number(data)).encode()
    return text(data).encode("utf-8", "surrogatepass")


def _dict(data: Provider) -> dict[str, Any]:
    valid = {"prompt": "make it blue", "images": [{"image_url": PIXEL_URL}]}
    body: dict[str, Any] = valid if data.ConsumeBool() else {}
    for _ in range(data.ConsumeIntInRange(0, 8)):
        name = key(data)
        field = FIELDS_BY_KEY.get(name)
        body[name] = _typed(data, field.kind) if field is not None and data.ConsumeBool() else json_value(data)
    return body


def _typed(data: Provider, kind: str) -> Any:
    """A value of about the right shape for a field of ``kind``."""
    if kind in ("integer", "number"):
        return number(data)
    if kind == "boolean":
        return data.ConsumeBool()
    if kind == "images":
        return [_image_object(data) for _ in range(data.ConsumeIntInRange(0, 5))]
    if kind == "file":
        return _image_object(data)
    if kind == "lora":
        return [{"name": text(data, 12), "scale": number(data)} for _ in range(data.ConsumeIntInRange(0, 9))]
    return text(data)


def _image_object(data: Provider) -> Any:
    url = PIXEL_URL if data.ConsumeBool() else text(data)
    shape = data.ConsumeIntInRange(0, 3)
    if shape == 0:
        return {"image_url": url}
    if shape == 1:
        return {"image_url": {"url": url}}
    if shape == 2:
        return {"file_id": text(data, 8)}
    return json_value(data, 2)
