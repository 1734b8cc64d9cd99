"""A seeded stream of mutated ``POST /v1/images/edits`` bodies, for fuzzing a real server over HTTP.

Each request starts from a valid multipart or JSON edit and is bent one to
three ways: bytes flipped, cut, spliced or repeated; a field's value swapped
for one of the values parsers choke on (huge numbers, lone surrogates, deep
nesting, odd URLs); fields repeated, renamed or dropped; the Content-Type's
boundary or charset changed. The same seed gives the same requests, so a
failure found by the HTTP fuzz test or the soak benchmark can be replayed.
"""

from __future__ import annotations

import base64
import io
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

#: Field values that have broken parsers somewhere (numbers, text, JSON, URLs, sizes).
AWKWARD_TEXT = (
    "",
    " ",
    "0",
    "-1",
    "1e309",
    "-0",
    "nan",
    "inf",
    "9" * 400,
    "true",
    "null",
    "[]",
    "{}",
    "{",
    "a" * 3000,
    "auto",
    "0x0",
    "64x",
    "99999x99999",
    "64x64x64",
    "\ud800",
    "red \udfff roses",
    "\x00",
    "\u202e\ufeff",
    "ink",
    "ink:1e999",
    "ink:" + "9" * 400,
    '{"name": "ink", "scale": ' + "9" * 400 + "}",
    '{"name": "ink", "x": ' + "[" * 1200 + "]" * 1200 + "}",
    "data:,",
    "data:image/png;base64,!!",
    "data:image/png,%ff%d8\ud800",
    "http://127.0.0.1/a.png",
    "http://[::1/a.png",
    "file:///etc/passwd",
)
#: JSON values of every type, in and out of range.
AWKWARD_JSON: tuple[object, ...] = (
    *AWKWARD_TEXT,
    0,
    -1,
    1.5,
    10**400,
    -(10**300),
    2**64,
    1e308,
    True,
    False,
    None,
    [],
    {},
    ["x"],
    [{"image_url": 5}],
    {"image_url": {"url": "data:,"}},
    {"file_id": "file-1"},
    [[[[[[[[[[[]]]]]]]]]]],
)
#: Byte strings spliced into a body.
AWKWARD_BYTES = (b"\r\n--", b"--\r\n", b'"', b"\\ud800", b"\xff\xfe", b"\x00", b"[" * 64, b"NaN", b"9" * 400, b";")
FIELDS = ("prompt", "n", "size", "seed", "lora", "quality", "output_format", "background", "stream", "mask", "model")


@dataclass(frozen=True)
class FuzzRequest:
    """One request to send: its body, its Content-Type and what was done to it."""

    body: bytes
    content_type: str
    mutations: tuple[str, ...]


def small_png(seed: int = 0) -> bytes:
    """A 64x48 PNG with a gradient, so that the edit has something to change."""
    image = Image.new("RGB", (64, 48))
    image.putdata([((x * 4 + seed) % 256, y * 5 % 256, (x + y) % 256) for y in range(48) for x in range(64)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def valid_multipart(seed: int, steps: int = 2) -> FuzzRequest:
    """A valid multipart edit with ``steps`` denoising steps (the tiny models make it quick)."""
    fields = {"prompt": "make it night", "num_inference_steps": str(steps), "seed": str(seed)}
    parts = [(name, value.encode(), None) for name, value in fields.items()]
    body, content_type = multipart_body([*parts, ("image", small_png(seed), "in.png")], f"imgedit-fuzz-{seed}")
    return FuzzRequest(body, content_type, ())


def valid_json(seed: int, steps: int = 2) -> FuzzRequest:
    """A valid JSON edit, its image as a ``data:`` URL."""
    image = "data:image/png;base64," + base64.b64encode(small_png(seed)).decode()
    fields = {"prompt": "make it night", "num_inference_steps": steps, "seed": seed, "images": [{"image_url": image}]}
    return FuzzRequest(json.dumps(fields).encode(), "application/json", ())


class RequestMutator:
    """Mutated edit requests, the same for the same ``seed``."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def next(self) -> FuzzRequest:
        """A valid request bent one to three ways."""
        seed = self.random.randrange(1000)
        request = valid_json(seed) if self.random.random() < 0.5 else valid_multipart(seed)
        for _ in range(self.random.randint(1, 3)):
            mutation = self.random.choice(self._mutations(request))
            request = mutation(request)
        return request

    def _mutations(self, request: FuzzRequest) -> list[Callable[[FuzzRequest], FuzzRequest]]:
        structural = self._json_field if request.content_type == "application/json" else self._form_field
        return [structural, structural, structural, self._bytes, self._bytes, self._content_type]

    def _json_field(self, request: FuzzRequest) -> FuzzRequest:
        try:
            fields = json.loads(request.body)
        except ValueError:
            return self._bytes(request)
        if not isinstance(fields, dict):
            return self._bytes(request)
        name = self.random.choice((*FIELDS, "images", "image_url", "num_inference_steps", "guidance_scale"))
        if self.random.random() < 0.15:
            fields.pop(name, None)
            return _as_json(fields, request, f"drop {name}")
        fields[name] = self.random.choice(AWKWARD_JSON)
        return _as_json(fields, request, f"{name}=")

    def _form_field(self, request: FuzzRequest) -> FuzzRequest:
        name = self.random.choice((*FIELDS, "image", "image[]", "url", "num_inference_steps", "\u00e9", "x" * 300))
        value = self.random.choice(AWKWARD_TEXT).encode("utf-8", "surrogatepass")
        marker = request.content_type.partition("boundary=")[2].encode()
        closing = b"--" + marker + b"--"
        if not marker or closing not in request.body:
            return self._bytes(request)
        part = b"--" + marker + f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        body = request.body.replace(closing, part + closing, 1)
        return FuzzRequest(body, request.content_type, (*request.mutations, f"+{name}"))

    def _bytes(self, request: FuzzRequest) -> FuzzRequest:
        body = bytearray(request.body)
        at = self.random.randrange(len(body) + 1)
        kind = self.random.choice(("flip", "cut", "splice", "repeat", "truncate"))
        if kind == "flip" and body:
            for _ in range(self.random.randint(1, 8)):
                body[self.random.randrange(len(body))] = self.random.randrange(256)
        elif kind == "cut":
            del body[at : at + self.random.randint(1, 64)]
        elif kind == "splice":
            body[at:at] = self.random.choice(AWKWARD_BYTES)
        elif kind == "repeat":
            body[at:at] = body[at : at + self.random.randint(1, 256)] * self.random.randint(2, 8)
        else:
            del body[at:]
        return FuzzRequest(bytes(body), request.content_type, (*request.mutations, kind))

    def _content_type(self, request: FuzzRequest) -> FuzzRequest:
        mime, _, boundary = request.content_type.partition("; boundary=")
        choices = [
            mime,
            f"{mime}; charset=utf-16",
            f"{mime}; boundary=",
            f"{mime}; boundary=" + "b" * 300,
            f'{mime}; boundary="{boundary}"',
            f"{mime}; boundary={boundary[:-1]}",
            "multipart/mixed; boundary=" + (boundary or "x"),
            "application/json; charset=latin-1",
            "text/plain",
            "",
        ]
        return FuzzRequest(request.body, self.random.choice(choices), (*request.mutations, "content-type"))


def _as_json(fields: dict[str, object], request: FuzzRequest, mutation: str) -> FuzzRequest:
    body = json.dumps(fields).encode()  # lone surrogates are written as \ud800 escapes, as a client would
    return FuzzRequest(body, request.content_type, (*request.mutations, mutation))


def multipart_body(parts: list[tuple[str, bytes, str | None]], boundary: str | None = None) -> tuple[bytes, str]:
    """Encode ``(name, data, filename)`` parts by hand; returns the body and its Content-Type.

    ``boundary`` defaults to a random one.
    """
    boundary = boundary or uuid.uuid4().hex
    chunks = []
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
