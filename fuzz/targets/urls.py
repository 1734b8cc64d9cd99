"""``urls``: :meth:`imgedit.media.fetch.Fetcher.read` given image URLs, with fetching off.

The input is the URL, decoded as UTF-8 with bytes that are not UTF-8 turned
into lone surrogates (a JSON body can write those): ``data:`` URLs in base64
(standard, URL-safe, padded or not, with whitespace) or percent-encoded, and
http(s)-looking strings. The fetcher's policy disables fetching and its resolver
fails the input if ever called: nothing reaches the network. The raw input is
also sent as the payload of well-formed data URLs, which must read back exactly.

Correct outcomes: a RequestError naming the field, or the URL's bytes, at most
the policy's ``max_bytes``, and only for a ``data:`` URL; when a URL reads as
``n`` bytes, a policy of ``n - 1`` refuses it with ``image_too_large``.
"""

from __future__ import annotations

import base64
from urllib.parse import quote_from_bytes

from fuzz.limits import fetch_policy
from fuzz.outcome import expect, refused, run
from imgedit.errors import RequestError
from imgedit.media.fetch import Fetcher

INSTRUMENT = ("imgedit", "fuzz", "httpx", "urllib", "base64")
DRIVES = ("imgedit.media.fetch.Fetcher.read",)
PARAM = "url[0]"


async def _no_network(host: str, port: int) -> list[str]:
    raise AssertionError(f"the fuzzed fetcher tried to resolve {host!r}: fetching is off")


FETCHER = Fetcher(fetch_policy(), resolver=_no_network)


def fuzz_one(data: bytes) -> None:
    url = data.decode("utf-8", "surrogateescape")
    read = refused(lambda: run(FETCHER.read(url, PARAM)))
    if read is not None:
        expect(url[:5].lower() == "data:", "only data: URLs are read with fetching off", url[:40])
        expect(len(read) <= FETCHER.policy.max_bytes, "a data URL keeps to max_bytes", len(read))
        if read:
            _expect_too_large(url, len(read) - 1)
    encoded = base64.b64encode(data).decode()
    for written in (
        "data:image/png;base64," + encoded,
        "DATA:image/png;BASE64," + encoded.rstrip("="),
        "data:;base64," + base64.urlsafe_b64encode(data).decode(),
        "data:image/png;base64," + " \n".join(encoded[i : i + 7] for i in range(0, len(encoded), 7)),
        "data:image/png," + quote_from_bytes(data),
    ):
        again = refused(lambda: run(FETCHER.read(written, PARAM)))  # noqa: B023  # called at once
        expect(again == data, "a well-formed data URL reads back its bytes", written[:60])


def _expect_too_large(url: str, limit: int) -> None:
    small = Fetcher(fetch_policy(max_bytes=limit), resolver=_no_network)
    try:
        run(small.read(url, PARAM))
    except RequestError as error:
        expect(error.code == "image_too_large", "a data URL past max_bytes is image_too_large", error.code)
    else:
        expect(False, "a data URL past max_bytes is refused", limit)
