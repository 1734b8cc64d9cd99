"""What the API answers: OpenAI's ``ImagesResponse``, its stream events, and errors.

The success body is declared once, as the pydantic model :class:`ImagesResponse`:
the OpenAPI document at ``/docs.json`` shows it, and every answer is built
from it. Metadata fields carry only concrete values from OpenAI's allowed sets,
so the body validates under the ``openai`` SDK's strict response validation,
and the SDK parses each streamed event into its own classes. Every error,
whichever layer raised it, is sent by :func:`error_response`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from imgedit.api.errors import ApiError
from imgedit.edit import Quality
from imgedit.media.encode import OutputFormat, ResolvedBackground
from imgedit.media.sizing import Size

SEEDS_HEADER = "x-imgedit-seeds"
#: The ``quality`` a response reports: OpenAI's values, never ``auto``.
ReportedQuality = Literal["low", "medium", "high", "xhigh", "max"]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


class UsageDetails(_Body):
    """The input tokens, by kind."""

    text_tokens: int
    image_tokens: int


class Usage(_Body):
    """Tokens behind the images: text and image tokens of the inputs, latent tokens of the outputs."""

    input_tokens: int
    input_tokens_details: UsageDetails
    output_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, text_tokens: int, image_tokens: int, output_tokens: int) -> Usage:
        """The usage of these counts, with the totals OpenAI reports."""
        inputs = text_tokens + image_tokens
        return cls(
            input_tokens=inputs,
            input_tokens_details=UsageDetails(text_tokens=text_tokens, image_tokens=image_tokens),
            output_tokens=output_tokens,
            total_tokens=inputs + output_tokens,
        )


class ImageItem(_Body):
    """One image of the answer: base64 in ``b64_json``, or a link in ``url`` (``response_format=url``); the other
    is null, and so is ``revised_prompt`` (prompts are kept verbatim)."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: None = None


class ImagesResponse(_Body):
    """The body of a successful ``POST /v1/images/edits`` (OpenAI's ``ImagesResponse``)."""

    created: int
    data: list[ImageItem]
    output_format: OutputFormat
    size: str
    background: ResolvedBackground
    quality: ReportedQuality
    usage: Usage


def error_response(error: ApiError) -> Response:
    """``error`` as an HTTP response: its status, headers and OpenAI-shaped JSON body."""
    return Response(
        json.dumps(error.body()).encode(),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


def reported_quality(quality: Quality) -> ReportedQuality:
    """The ``quality`` that ran, as OpenAI reports it: ``auto`` runs the model's default steps, which is ``high``."""
    return "high" if quality == "auto" else quality


def images_response(body: ImagesResponse, seeds: Sequence[int]) -> Response:
    """A 200 JSON response carrying ``body``; the seed of each image is listed, in order, in ``x-imgedit-seeds``."""
    return Response(
        body.model_dump_json().encode(),
        media_type="application/json",
        headers={SEEDS_HEADER: ",".join(str(seed) for seed in seeds)},
    )


def b64(image: bytes) -> str:
    """An encoded image as the API carries it: standard base64, as ASCII text."""
    return base64.b64encode(image).decode("ascii")


@dataclass(frozen=True, kw_only=True)
class StreamInfo:
    """What every event of one streamed edit repeats."""

    created_at: int
    size: Size
    quality: ReportedQuality
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
    payload = {"type": "image_edit.partial_image", "b64_json": b64(image), "partial_image_index": index}
    return sse("image_edit.partial_image", {**payload, **info.fields()})


def completed_event(image: bytes, info: StreamInfo, usage: Usage) -> bytes:
    """``image_edit.completed``: one finished image, with the tokens it took."""
    payload = {"type": "image_edit.completed", "b64_json": b64(image), "usage": usage.model_dump()}
    return sse("image_edit.completed", {**payload, **info.fields()})


def error_event(body: dict[str, object]) -> bytes:
    """A failure after the stream started: the OpenAI error body as the event's data."""
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()
