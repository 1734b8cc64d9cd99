"""The request headers that change how an edit is answered: ``Prefer: respond-async`` and ``Idempotency-Key``.

``Prefer`` (RFC 7240) asks for a background job: the answer comes at once, as
202 and the job, instead of when the images are ready. The body's own
``background`` field already means transparency in OpenAI's API, so a header
is the switch. ``Idempotency-Key`` (the IETF httpapi draft) names a request so
that a retry replays its answer instead of running the model again.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from imgedit.api.errors import ApiError

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: The longest key taken; the draft sets no bound, Stripe's is 255.
MAX_IDEMPOTENCY_KEY_CHARS = 255


def prefers_async(headers: Headers) -> bool:
    """Whether a ``Prefer`` header holds the ``respond-async`` preference (any case, among others)."""
    for value in headers.getlist("prefer"):
        for preference in value.split(","):
            if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async":
                return True
    return False


def idempotency_key(headers: Headers) -> str | None:
    """The request's idempotency key, if it sent one: a structured-field string (quoted) or a bare token.

    Raises:
        ApiError: 400 for an empty, too long or non-printable key, or for two keys.
    """
    values = headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None
    key = values[0].strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if len(values) > 1 or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise ApiError(
            400,
            f"Invalid {IDEMPOTENCY_HEADER}: send one key of 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII "
            "characters, such as a UUID.",
            param=IDEMPOTENCY_HEADER,
            code="invalid_idempotency_key",
        )
    return key
