"""``admin``: the JSON body reader of the LoRA admin endpoints (``_admin_body`` in :mod:`imgedit.api.routes`).

The reader takes a Starlette ``Request``; it is driven in process with a
request built on an ASGI scope whose ``receive`` hands over the body, no server
involved. Input: the :mod:`fuzz.envelope` format, head optional (``X-Chunks``
splits the body into ``http.request`` messages); the seeds are vLLM's
``load_lora_adapter`` and ``unload_lora_adapter`` bodies.

Correct outcomes: an ApiError below 500 (400, or 413 past its 64 KiB), or a dict.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Message

from fuzz.envelope import open_envelope
from fuzz.outcome import expect, refused, run
from imgedit.api import routes

INSTRUMENT = ("imgedit", "json", "fuzz")
DRIVES = ("imgedit.api.routes._admin_body",)


def fuzz_one(data: bytes) -> None:
    request = open_envelope(data)
    body = refused(lambda: run(routes._admin_body(_request(request.chunks()))))
    if body is not None:
        expect(isinstance(body, dict), "the admin body is an object", type(body))
        expect(len(request.body) <= routes.MAX_ADMIN_BODY_BYTES, "the admin body keeps to its size limit")


def _request(pieces: list[bytes]) -> Request:
    messages = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]

    async def receive() -> Message:
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/load_lora_adapter",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    return Request(scope, receive)
