"""Small builders shared by the tests: images and multipart bodies."""

from __future__ import annotations

import io
import struct
import zlib

import anyio
import httpx
from PIL import Image
from starlette.requests import Request
from starlette.types import Message

from devtools.mutations import multipart_body
from imgedit.api.errors import ApiError, http_error
from imgedit.api.multipart import Form, Part
from imgedit.errors import RequestError


def image_bytes(
    width: int = 64,
    height: int = 64,
    color: tuple[int, ...] = (200, 40, 40),
    mode: str = "RGB",
    fmt: str = "PNG",
    **save: object,
) -> bytes:
    """An encoded single-colour image."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def gradient_png(width: int = 64, height: int = 64, alpha: bool = False) -> bytes:
    """A PNG whose pixels differ, so edits of different inputs differ too."""
    image = Image.new("RGBA" if alpha else "RGB", (width, height))
    image.putdata(
        [
            (x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256, 0 if alpha and x < width // 2 else 255)[: 4 if alpha else 3]
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def form(*parts: tuple[str, str | bytes] | Part) -> Form:
    """A :class:`Form` from ``(name, value)`` pairs; bytes values become file parts."""
    built = []
    for part in parts:
        if isinstance(part, Part):
            built.append(part)
            continue
        name, value = part
        if isinstance(value, bytes):
            built.append(Part(name, value, filename="upload", content_type="application/octet-stream"))
        else:
            built.append(Part(name, value.encode()))
    return Form(tuple(built))


def small_edit(url: str, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    """POST a 64x64, two-step edit of :func:`gradient_png` to the server at ``url``, on a new connection.

    ``fields`` are added to (or replace) the form's ``prompt``, ``size`` and ``num_inference_steps``.
    """
    return httpx.post(
        f"{url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data={"prompt": "p", "size": "64x64", "num_inference_steps": "2", **fields},
        headers=headers,
        timeout=300,
    )


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` x ``height``."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def edits_request_head(netloc: str, content_type: str, content_length: int, **headers: str) -> bytes:
    """The raw HTTP/1.1 head of a ``POST /v1/images/edits``, for tests that send the body by hand."""
    lines = [
        "POST /v1/images/edits HTTP/1.1",
        f"Host: {netloc}",
        f"Content-Type: {content_type}",
        f"Content-Length: {content_length}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_request(body: bytes, content_type: str, chunk_bytes: int = 65536, declare_length: bool = True) -> Request:
    """A Starlette request for ``POST /v1/images/edits`` whose body arrives in chunks.

    ``declare_length=False`` sends no Content-Length (a chunked upload). Once the
    body is read, the client stays connected: the next receive waits forever.
    """
    chunks = [body[start : start + chunk_bytes] for start in range(0, len(body), chunk_bytes)] or [b""]
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/images/edits",
        "headers": [(b"content-type", content_type.encode())]
        + ([(b"content-length", str(len(body)).encode())] if declare_length else []),
    }
    return Request(scope, receive)


def form_request(*parts: tuple[str, str | bytes]) -> Request:
    """:func:`http_request` carrying the multipart form of ``(name, value)`` pairs (bytes values are files)."""
    encoded = [
        (name, value, "upload") if isinstance(value, bytes) else (name, value.encode(), None) for name, value in parts
    ]
    return http_request(*multipart_body(encoded))


#: What a refusal of the request is, whichever layer made it: the API's own errors, or a layer's below.
Refused = (ApiError, RequestError)


def status_of(error: ApiError | RequestError) -> int:
    """The HTTP status the client gets for ``error``."""
    return error.status if isinstance(error, ApiError) else http_error(error).status
