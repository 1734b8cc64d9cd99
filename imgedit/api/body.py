"""Reading the body of ``POST /v1/images/edits`` from the connection, within the server's limits.

Two encodings are accepted on the same route: ``multipart/form-data`` (what
every SDK sends) and ``application/json`` (what OpenAI also takes, and what
gateways and agents send). Either is read here rather than by BentoML: its
typed multipart inputs answer 500 to the ``image[]`` parts the ``openai`` SDK
sends, JSON-decode text fields (a prompt of ``123`` becomes a number) and spool
uploads to disk. The body's size and pace are limited as it streams in, and
every failure, a client that hangs up included, is an
:class:`~imgedit.errors.ApiError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from imgedit.api.errors import ApiError
from imgedit.api.json_text import parse_json
from imgedit.api.multipart import Form, MultipartLimits, paced, read_multipart, refuse_declared_excess, too_large
from imgedit.errors import invalid

MULTIPART = "multipart/form-data"
JSON = "application/json"


async def read_body(request: Request, limits: MultipartLimits) -> Form | dict[str, Any]:
    """The request's form, or its JSON object, read as it streams in.

    Raises:
        ApiError: 400 for another content type, a malformed body or JSON that
            is not an object; 413 past ``limits.max_body_bytes``; 408 when the
            body comes too slowly; 400 when the client disconnects meanwhile.
    """
    return await _parse(
        request.headers.get("content-type"), request.headers.get("content-length"), request.stream(), limits
    )


async def _parse(
    content_type: str | None, content_length: str | None, stream: AsyncIterator[bytes], limits: MultipartLimits
) -> Form | dict[str, Any]:
    mime = parse_options_header(content_type or "")[0].decode("latin-1").lower()
    try:
        if mime == MULTIPART:
            return await read_multipart(content_type, content_length, stream, limits)
        if mime == JSON:
            return await read_json(content_length, stream, limits)
    except ClientDisconnect:
        raise _disconnected() from None
    raise ApiError(
        400, f"The request body must be {MULTIPART} or {JSON}; got {mime or 'none'}.", code="invalid_content_type"
    )


def _disconnected() -> ApiError:
    # Nobody will read the answer; this keeps a traceback out of the log.
    return ApiError(400, "The client disconnected while sending the request.", code="client_disconnected")


async def read_json(content_length: str | None, body: AsyncIterator[bytes], limits: MultipartLimits) -> dict[str, Any]:
    """A JSON object body, within the body size and pace of ``limits``.

    Raises:
        ApiError: 413 past the size limit, 408 when too slow.
        RequestError: 400 for malformed JSON, JSON that is not an object, and
            what :func:`~imgedit.api.json_text.parse_json` refuses (naming the field).
    """
    refuse_declared_excess(content_length, limits.max_body_bytes)
    data = bytearray()
    async for chunk in paced(body, limits.idle_seconds, limits.total_seconds):
        data += chunk
        if len(data) > limits.max_body_bytes:
            raise too_large("The request body", limits.max_body_bytes)
    parsed = parse_json(data, None, "The request body")
    if not isinstance(parsed, dict):
        raise invalid(None, "The JSON body must be an object of fields.", code="invalid_json")
    return parsed


@dataclass(frozen=True)
class RawBody:
    """A body read whole, before parsing: for a request that must be kept (a background job) or recognised
    again (an idempotency key)."""

    content_type: str
    data: bytes

    def fingerprint(self, *extra: str) -> str:
        """SHA-256 of what the body says, with ``extra`` facts about the request.

        A multipart body is taken without its boundary, which a client picks
        afresh for every attempt; JSON is taken byte for byte.
        """
        digest = hashlib.sha256()
        options = parse_options_header(self.content_type)
        boundary = options[1].get(b"boundary", b"")
        digest.update(options[0].lower() + b"\0" + "\0".join(extra).encode() + b"\0")
        digest.update(self.data.replace(boundary, b"") if boundary else self.data)
        return digest.hexdigest()

    async def parse(self, limits: MultipartLimits) -> Form | dict[str, Any]:
        """The form or JSON object, as :func:`read_body` would read it from the connection."""
        return await _parse(self.content_type, str(len(self.data)), _once(self.data), limits)


async def read_raw(request: Request, limits: MultipartLimits) -> RawBody:
    """The whole body, within the size and pace of ``limits``; parse it with :meth:`RawBody.parse`.

    Raises:
        ApiError: 413 past the size limit, 408 when too slow, 400 when the client disconnects meanwhile.
    """
    refuse_declared_excess(request.headers.get("content-length"), limits.max_body_bytes)
    data = bytearray()
    try:
        async for chunk in paced(request.stream(), limits.idle_seconds, limits.total_seconds):
            data += chunk
            if len(data) > limits.max_body_bytes:
                raise too_large("The request body", limits.max_body_bytes)
    except ClientDisconnect:
        raise _disconnected() from None
    return RawBody(request.headers.get("content-type") or "", bytes(data))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
