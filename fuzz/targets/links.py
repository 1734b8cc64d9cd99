"""``links``: what a client sends around a body: the ``Prefer`` and ``Idempotency-Key`` headers, a signed image
link (its name, ``expires`` and ``signature``) and a job id.

Input: those five values, separated by NUL bytes, the headers as Latin-1 (as
the server receives them), the rest as UTF-8 with errors replaced (as a path
and query string decode). The link is opened in a directory store holding one
image, signed with a fixed key; the job id is looked up in a job table holding
one job. A seed opens that image with a valid link.

Correct outcomes: ``prefers_async`` a bool; ``idempotency_key`` None, a key of 1
to 255 printable ASCII characters, or a 400 naming the header; a link refused
with 403, 404 or 410, or opened to the one stored image, never another path;
a job found only for its exact id.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from starlette.datastructures import Headers

from fuzz.outcome import expect, refused
from imgedit.api.headers import MAX_IDEMPOTENCY_KEY_CHARS, idempotency_key, prefers_async
from imgedit.durable.database import Database
from imgedit.durable.images import DirectoryStore, LinkRefused
from imgedit.durable.jobs import JobTable
from imgedit.durable.links import LinkSigner

INSTRUMENT = ("imgedit", "fuzz")
DRIVES = (
    "imgedit.api.headers.prefers_async",
    "imgedit.api.headers.idempotency_key",
    "imgedit.durable.images.DirectoryStore.open",
    "imgedit.durable.jobs.JobTable.get",
)
#: The key, the stored image and the job the seeds name (``python -m fuzz.seeds`` writes a valid link).
KEY = b"k" * 32
NAME = "4102444800_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.png"
EXPIRES = 4102444000
_ROOT = Path(tempfile.mkdtemp(prefix="imgedit-fuzz-links-"))
_STORE = DirectoryStore(_ROOT / "images", LinkSigner(KEY))
(_STORE.root / NAME).write_bytes(b"\x89PNG")
_JOBS = JobTable(Database(_ROOT), "fuzz", 60, "m")
_JOB = _JOBS.create(owner="", body=b"", content_type="", webhook_url=None, now=1.0)


def fuzz_one(data: bytes) -> None:
    prefer, key, name, expires, signature = (data.split(b"\x00") + [b""] * 5)[:5]
    headers = Headers(raw=[(b"prefer", prefer), (b"idempotency-key", key)] if key else [(b"prefer", prefer)])
    expect(isinstance(prefers_async(headers), bool), "Prefer is read as a yes or a no")
    found = refused(lambda: idempotency_key(headers))
    if found is not None:
        expect(
            0 < len(found) <= MAX_IDEMPOTENCY_KEY_CHARS and found.isascii() and found.isprintable(),
            "a key is 1 to 255 printable ASCII characters",
            found,
        )
    text = name.decode("utf-8", "replace")
    try:
        path = _STORE.open(text, expires.decode("utf-8", "replace"), signature.decode("utf-8", "replace"), now=EXPIRES)
    except LinkRefused as link:
        expect(link.status in (403, 404, 410), "a link is refused with 403, 404 or 410", link.status)
    else:
        expect(path == _STORE.root / NAME, "a link opens the stored image and nothing else", path)
    job = _JOBS.get(text, "")
    expect(job is None or (text == _JOB.id and job.id == _JOB.id), "a job is found by its exact id only", text)
