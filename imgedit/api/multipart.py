"""Streaming ``multipart/form-data`` reader that keeps every part in memory.

Starlette's form parser spools uploads over 1 MiB to temporary files (uploaded
images must never touch the disk here) and decodes parts without a filename as
text (the ``openai`` SDK sends ``(None, bytes)`` images that way). This reader
drives python-multipart's parser directly instead: every part keeps its raw
bytes, and the byte limits are enforced while the body streams in, before it
is ever buffered whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header

from imgedit.api.errors import ApiError
from imgedit.errors import invalid


@dataclass(frozen=True)
class Part:
    """One form part. ``filename`` is None for a plain field (and for some file uploads)."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Form:
    """All parts of a form, in the order they were received."""

    parts: tuple[Part, ...]

    def named(self, *names: str) -> list[Part]:
        """Parts whose name is any of ``names``, in arrival order."""
        return [part for part in self.parts if part.name in names]


@dataclass(frozen=True, kw_only=True)
class MultipartLimits:
    """Caps applied while reading.

    Attributes:
        max_body_bytes: the whole body (413 when exceeded).
        max_parts: the number of parts (400).
        part_bytes: maximum size of one part, given its field name (413).
        idle_seconds: longest wait for the next chunk of the body (408).
        total_seconds: longest time to receive the whole body (408).
    """

    max_body_bytes: int
    max_parts: int
    part_bytes: Callable[[str], int]
    idle_seconds: float = 30.0
    total_seconds: float = 300.0


def too_large(what: str, limit: int, param: str | None = None) -> ApiError:
    return ApiError(413, f"{what} exceeds the limit of {limit} bytes.", param=param, code="payload_too_large")


def refuse_declared_excess(content_length: str | None, limit: int) -> None:
    """Refuse at once a body whose ``Content-Length`` declares more than ``limit`` bytes.

    Only a plain ASCII number declares a length (``str.isdigit`` also takes
    digits such as ``'²'`` that ``int`` refuses); with anything else the body is
    measured as it arrives.

    Raises:
        ApiError: 413.
    """
    if content_length and content_length.isascii() and content_length.isdigit() and int(content_length) > limit:
        raise too_large("The request body", limit)


@dataclass(kw_only=True)
class _PartsCollector:
    limits: MultipartLimits
    parts: list[Part] = field(default_factory=list)
    finished: bool = False
    _name: str = ""
    _filename: str | None = None
    _content_type: str | None = None
    _limit: int = 0
    _headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    _header_name: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _data: bytearray = field(default_factory=bytearray)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.limits.max_parts:
            raise invalid(None, f"The form has more than {self.limits.max_parts} parts.", code="too_many_parts")
        self._headers = []
        self._data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        headers = dict(self._headers)
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise invalid(None, "A form part has no name in its Content-Disposition header.", code="invalid_multipart")
        self._name = options[b"name"].decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = filename.decode("utf-8", "replace") if filename is not None else None
        content_type = headers.get(b"content-type")
        self._content_type = content_type.decode("latin-1") if content_type is not None else None
        self._limit = self.limits.part_bytes(self._name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if len(self._data) + (end - start) > self._limit:
            raise too_large(f"Field '{self._name}'", self._limit, param=self._name)
        self._data += data[start:end]

    def on_part_end(self) -> None:
        self.parts.append(Part(self._name, bytes(self._data), self._filename, self._content_type))
        self._data = bytearray()

    def on_end(self) -> None:
        self.finished = True


async def read_multipart(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    limits: MultipartLimits,
) -> Form:
    """Read a ``multipart/form-data`` body into a :class:`Form`.

    Raises:
        ApiError: 400 for a wrong content type or a malformed body, 413 when a
            size limit is exceeded (checked on the declared length first, then on
            the bytes actually received).
    """
    mime, options = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        raise ApiError(
            400,
            "The request body must be multipart/form-data.",
            code="invalid_content_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise invalid(None, "The multipart Content-Type has no boundary.", code="invalid_multipart")
    refuse_declared_excess(content_length, limits.max_body_bytes)

    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise invalid(
            None,
            f"The multipart boundary is {len(boundary)} bytes long; at most {MAX_BOUNDARY_LENGTH} are accepted "
            "(RFC 2046 allows 70).",
            code="invalid_multipart",
        )
    collector = _PartsCollector(limits=limits)
    received = 0
    preamble = _Preamble(b"--" + boundary)
    try:
        # python-multipart types its callbacks one by one; a dict of bound methods is what it takes.
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]  # see above
        async for chunk in paced(body, limits.idle_seconds, limits.total_seconds):
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise too_large("The request body", limits.max_body_bytes)
            parser.write(preamble.past(chunk))
        parser.finalize()
    except FormParserError:
        raise invalid(None, "The multipart body is malformed.", code="invalid_multipart") from None
    if not collector.finished:
        raise invalid(None, "The multipart body ended before its closing boundary.", code="invalid_multipart")
    return Form(tuple(collector.parts))


class _Preamble:
    """Drops what comes before the first boundary (RFC 2046's preamble), whatever the chunks.

    python-multipart skips a preamble or refuses the body depending on how the
    body was split into chunks (a body it reads whole can fail one byte at a
    time), so the parser is given the body from its first boundary on.
    """

    def __init__(self, delimiter: bytes) -> None:
        self.delimiter = delimiter
        self.seen = bytearray()
        self.over = False

    def past(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` after the preamble (all of it once the first boundary has come)."""
        if self.over:
            return chunk
        self.seen += chunk
        at = self.seen.find(self.delimiter)
        if at < 0:
            del self.seen[: -len(self.delimiter)]  # only a tail that may begin the boundary is kept
            return b""
        self.over = True
        return bytes(self.seen[at:])


async def paced(body: AsyncIterator[bytes], idle_seconds: float, total_seconds: float) -> AsyncIterator[bytes]:
    """``body``'s chunks, as long as each comes within ``idle_seconds`` and all within ``total_seconds``.

    A client that trickles its body would otherwise hold a connection, and
    the memory of what it sent so far, for as long as it likes.

    Raises:
        ApiError: 408 when the client is too slow.
    """
    deadline = time.monotonic() + total_seconds
    chunks = aiter(body)
    while True:
        wait = min(idle_seconds, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout=max(0.0, wait))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                408,
                f"The request body arrived too slowly (limits: {idle_seconds:g} s between chunks, "
                f"{total_seconds:g} s in all).",
                code="request_timeout",
            ) from None
        yield chunk
