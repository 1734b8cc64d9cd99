"""The input format of the body targets: an HTTP-like head, a blank line, then the body.

A seed reads like the request it stands for::

    Content-Type: multipart/form-data; boundary=abc
    X-Chunks: 1,7,300

    --abc
    ...

The head is optional: input whose first line is not ``Name: value`` is all body.
Header names are case-insensitive and decoded as Latin-1, as Starlette does.

* ``Content-Type`` and ``Content-Length`` are passed as the request's headers
  (verbatim, so a lying ``Content-Length`` is fuzzed too);
* ``X-Chunks``: the sizes the body arrives in, cycled (0 sends an empty chunk);
  without it the body arrives whole;
* ``X-Max-Body``, ``X-Max-Parts``, ``X-Field-Bytes``: smaller limits than the
  server's (see :func:`fuzz.limits.body_limits`), so that the limits are reached.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fuzz.limits import body_limits
from fuzz.values import climb_nesting
from imgedit.api.multipart import MultipartLimits

_HEADER = re.compile(rb"[A-Za-z][A-Za-z0-9-]*:")
#: More chunks than this and the rest of the body arrives in the last one (each costs a task in ``paced``).
MAX_CHUNKS = 256


@dataclass(frozen=True)
class Envelope:
    """A request: ``headers`` by lower-case name, and its ``body``."""

    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def number(self, name: str) -> int | None:
        """Header ``name`` as a non-negative integer (at most 9 digits), or None."""
        value = self.headers.get(name, "").strip()
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None

    def chunks(self) -> list[bytes]:
        """The body in the pieces ``X-Chunks`` asks for."""
        sizes = [int(size) for size in re.findall(r"\d{1,7}", self.headers.get("x-chunks", ""))]
        if not sizes:
            return [self.body]
        pieces: list[bytes] = []
        start = 0
        while start < len(self.body) and len(pieces) < MAX_CHUNKS - 1:
            size = sizes[len(pieces) % len(sizes)]
            pieces.append(self.body[start : start + size])
            start += size
        pieces.append(self.body[start:])
        return pieces

    def limits(self) -> MultipartLimits:
        """The server's body limits, lowered where the head asks."""
        return body_limits(
            max_body_bytes=self.number("x-max-body"),
            max_parts=self.number("x-max-parts"),
            field_bytes=self.number("x-field-bytes"),
        )


def open_envelope(data: bytes) -> Envelope:
    """Split ``data`` into its head (when it has one) and its body."""
    climb_nesting(data)
    if not _HEADER.match(data):
        return Envelope({}, data)
    ends = [(index, len(mark)) for mark in (b"\r\n\r\n", b"\n\n") if (index := data.find(mark)) >= 0]
    end, mark = min(ends) if ends else (len(data), 0)
    headers = {}
    for line in data[:end].splitlines():
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return Envelope(headers, data[end + mark :])


async def stream(pieces: list[bytes]) -> AsyncIterator[bytes]:
    """``pieces`` one by one, as a request body streams in."""
    for piece in pieces:
        yield piece
