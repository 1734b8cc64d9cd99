"""``multipart``: a multipart body read by :func:`imgedit.api.multipart.read_multipart`, then parsed.

Input: the :mod:`fuzz.envelope` format: ``Content-Type`` (boundary and all) and
``Content-Length`` as the client sent them, the body in the chunk sizes
``X-Chunks`` gives, and lowered limits. The seeds are bodies as the ``openai``
SDK sends them.

Correct outcomes: the read refuses (400, 408, 413) or returns a form that keeps
to the limits; a chunked body reads as the same form as the whole body does (or
is refused both ways); then :func:`~imgedit.api.parse.parse_edit_request` refuses
the form or returns a request that keeps its promises (:func:`fuzz.checks.check_request`).
"""

from __future__ import annotations

from fuzz.checks import check_form, check_request
from fuzz.envelope import Envelope, open_envelope, stream
from fuzz.limits import request_limits
from fuzz.outcome import expect, refused, run
from imgedit.api.multipart import Form, read_multipart
from imgedit.api.parse import parse_edit_request

INSTRUMENT = ("imgedit", "python_multipart", "fuzz")
DRIVES = ("imgedit.api.multipart.read_multipart", "imgedit.api.parse.parse_edit_request")
LIMITS = request_limits()


def fuzz_one(data: bytes) -> None:
    request = open_envelope(data)
    limits = request.limits()
    form = _read(request, request.chunks())
    if "x-chunks" in request.headers:
        whole = _read(request, [request.body])
        expect(form == whole, "read_multipart reads a body the same, whatever its chunks", (form, whole))
    if form is None:
        return
    check_form(form, request.body, limits)
    parsed = refused(lambda: parse_edit_request(form, LIMITS))
    if parsed is not None:
        check_request(parsed, LIMITS)


def _read(request: Envelope, pieces: list[bytes]) -> Form | None:
    content_type, length = request.header("content-type"), request.header("content-length")
    return refused(lambda: run(read_multipart(content_type, length, stream(pieces), request.limits())))
