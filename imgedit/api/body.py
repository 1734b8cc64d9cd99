"""Reading the body of ``POST /v1/images/edits`` from the connection, within the server's limits.

The form is read here rather than by BentoML: its typed multipart inputs
answer 500 to the ``image[]`` parts the ``openai`` SDK sends, JSON-decode text
fields (a prompt of ``123`` becomes a number, ``null`` fails) and spool uploads
to disk. Every failure, a client that hangs up included, is an
:class:`~imgedit.errors.ApiError`.
"""

from __future__ import annotations

import math

from starlette.requests import ClientDisconnect, Request

from imgedit.api.multipart import Form, MultipartLimits, read_multipart
from imgedit.api.parse import IMAGE_FIELDS, MASK_FIELD, URL_FIELDS
from imgedit.config import Settings
from imgedit.errors import ApiError

#: Room for ``data:image/...;base64,`` around a base64 payload.
_DATA_URL_OVERHEAD = 1024


def multipart_limits(settings: Settings) -> MultipartLimits:
    """Per-part caps: image bytes for files, a base64 image for URLs, the field cap otherwise."""
    data_url_bytes = math.ceil(settings.max_image_bytes / 3) * 4 + _DATA_URL_OVERHEAD

    def part_bytes(name: str) -> int:
        if name in IMAGE_FIELDS or name == MASK_FIELD:
            return settings.max_image_bytes
        if name in URL_FIELDS:
            return max(settings.max_field_bytes, data_url_bytes)
        return settings.max_field_bytes

    return MultipartLimits(
        settings.max_body_bytes,
        settings.max_parts,
        part_bytes,
        idle_seconds=settings.body_idle_timeout,
        total_seconds=settings.body_timeout,
    )


async def read_form(request: Request, limits: MultipartLimits) -> Form:
    """The multipart form of ``request``, read as it streams in.

    Raises:
        ApiError: the body is not an acceptable form (see :func:`~imgedit.api.multipart.read_multipart`),
            or the client disconnected while sending it.
    """
    try:
        return await read_multipart(
            request.headers.get("content-type"), request.headers.get("content-length"), request.stream(), limits
        )
    except ClientDisconnect:
        # Nobody will read the answer; this keeps a traceback out of the log.
        raise ApiError(400, "The client disconnected while sending the request.", code="client_disconnected") from None
