"""What the API answers: OpenAI's ``ImagesResponse``, its stream events, and errors.

Metadata fields carry only concrete values from OpenAI's allowed sets, so the
body validates under the ``openai`` SDK's strict response validation, and the
SDK parses each streamed event into its own classes. Every error, whichever
layer raised it, is sent by :func:`error_response`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.responses import Response

from imgedit.edit import Quality
from imgedit.errors import ApiError
from imgedit.media.encode import OutputFormat, ResolvedBackground
from imgedit.media.sizing import Size

SEEDS_HEADER = "x-imgedit-seeds"


def error_response(error: ApiError) -> Response:
    """``error`` as an HTTP response: its status, headers and OpenAI-shaped JSON body."""
    return Response(
        json.dumps(error.body()).encode(),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


def reported_quality(quality: Quality) -> str:
    """The ``quality`` that ran, as OpenAI reports it: ``auto`` runs the model's default steps, which is ``high``."""
    return "high" if quality == "auto" else quality


def images_response(
    encoded: Sequence[bytes],
    *,
    created: int,
    output_format: OutputFormat,
    size: Size,
    background: ResolvedBackground,
    quality: str,
    usage: dict[str, object],
    seeds: Sequence[int],
) -> Response:
    """A 200 JSON response with one ``b64_json`` item per encoded image, the quality that ran, and the tokens.

    The seed of each image is listed, in order, in the ``x-imgedit-seeds`` header.
    """
    body = {
        "created": created,
        "data": [{"b64_json": _b64(image), "url": None, "revised_prompt": None} for image in encoded],
        "output_format": output_format,
        "size": str(size),
        "background": background,
        "quality": quality,
        "usage": usage,
    }
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        media_type="application/json",
        headers={SEEDS_HEADER: ",".join(str(seed) for seed in seeds)},
    )


@dataclass(frozen=True)
class StreamInfo:
    """What every event of one streamed edit repeats."""

    created_at: int
    size: Size
    quality: str
    background: ResolvedBackground
    output_format: OutputFormat

    def fields(self) -> dict[str, object]:
        return {
            "created_at": self.created_at,
            "size": str(self.size),
            "quality": self.quality,
            "background": self.background,
            "output_format": self.output_format,
        }


def sse(event_type: str, payload: dict[str, object]) -> bytes:
    """One server-sent event; every event has a data line, which the ``openai`` SDK needs."""
    return f"event: {event_type}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def partial_image_event(image: bytes, index: int, info: StreamInfo) -> bytes:
    """``image_edit.partial_image``: a preview of an image in progress; ``index`` counts from 0 per request."""
    payload = {"type": "image_edit.partial_image", "b64_json": _b64(image), "partial_image_index": index}
    return sse("image_edit.partial_image", {**payload, **info.fields()})


def completed_event(image: bytes, info: StreamInfo, usage: dict[str, object]) -> bytes:
    """``image_edit.completed``: one finished image, with the tokens it took."""
    payload = {"type": "image_edit.completed", "b64_json": _b64(image), "usage": usage}
    return sse("image_edit.completed", {**payload, **info.fields()})


def error_event(body: dict[str, object]) -> bytes:
    """A failure after the stream started: the OpenAI error body as the event's data."""
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode("ascii")
