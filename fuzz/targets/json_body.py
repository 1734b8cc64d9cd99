"""``json_body``: a JSON body read by :func:`imgedit.api.body.read_json`, then parsed.

Input: the :mod:`fuzz.envelope` format, head optional: a bare JSON document is
all body; a head can add ``Content-Length``, ``X-Chunks`` and ``X-Max-Body``.
The seeds are edit requests as gateways and agents send them, images as
``data:`` URLs.

Correct outcomes: the read refuses (400, 408, 413) or returns a dict; then
:func:`~imgedit.api.parse.parse_edit_request` refuses it or returns a request
that keeps its promises (:func:`fuzz.checks.check_request`), among them that
every text in it encodes as UTF-8: JSON's ``\\ud800`` escapes write lone
surrogates, which the tokenizer, the log and the JSON answer cannot take.
"""

from __future__ import annotations

from fuzz.checks import check_request
from fuzz.envelope import open_envelope, stream
from fuzz.limits import request_limits
from fuzz.outcome import expect, refused, run
from imgedit.api.body import read_json
from imgedit.api.parse import parse_edit_request

INSTRUMENT = ("imgedit", "json", "fuzz")
DRIVES = ("imgedit.api.body.read_json", "imgedit.api.parse.parse_edit_request")
LIMITS = request_limits()


def fuzz_one(data: bytes) -> None:
    request = open_envelope(data)
    length, pieces, limits = request.header("content-length"), request.chunks(), request.limits()
    body = refused(lambda: run(read_json(length, stream(pieces), limits)))
    if body is None:
        return
    expect(isinstance(body, dict), "read_json returns an object", type(body))
    parsed = refused(lambda: parse_edit_request(body, LIMITS))
    if parsed is not None:
        check_request(parsed, LIMITS)
