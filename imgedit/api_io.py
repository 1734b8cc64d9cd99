"""BentoML I/O descriptors of ``POST /v1/images/edits``; the input one reads the form itself.

BentoML's typed multipart inputs answer 500 to the ``image[]`` parts the
``openai`` SDK sends, JSON-decode text fields (a prompt of ``123`` becomes a
number, ``null`` fails) and turn undecodable images into 500s. This descriptor
replaces that parsing: it streams the body through :mod:`imgedit.multipart`
and hands the handler either the :class:`~imgedit.multipart.Form` or the
:class:`~imgedit.errors.ApiError` that reading it raised, so even a malformed
body gets an OpenAI-shaped answer.

It overrides ``from_http_request``, which BentoML 1.4 calls on every input
descriptor but does not document; the BentoML version is pinned and the
integration tests exercise this path.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import bentoml
from pydantic import ConfigDict
from starlette.requests import ClientDisconnect, Request

from imgedit.config import Settings
from imgedit.errors import ApiError
from imgedit.multipart import Form, MultipartLimits, read_multipart
from imgedit.request import IMAGE_FIELDS, MASK_FIELD, URL_FIELDS

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


_TEXT = {"type": "string"}
_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer"}
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}

#: The documented form (OpenAPI), since the model's own fields are internal.
EDIT_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ImageEditForm",
    "required": ["prompt"],
    "properties": {
        "image": {
            **_FILES,
            "description": "Image(s) to edit; also accepted as 'image[]'. PNG, JPEG, WebP, BMP, TIFF or GIF.",
        },
        "url": {
            "type": "array",
            "items": _TEXT,
            "description": "Image URLs (http(s) or data:), after the uploads; also 'url[]'.",
        },
        "prompt": {**_TEXT, "description": "What to change. Kept verbatim."},
        "model": {**_TEXT, "description": "Optional; must name the served model."},
        "n": {**_INTEGER, "minimum": 1, "maximum": 10, "default": 1},
        "size": {
            **_TEXT,
            "default": "auto",
            "pattern": "^(auto|[0-9]+[xX][0-9]+)$",
            "description": "'auto' or 'WIDTHxHEIGHT'.",
        },
        "response_format": {"type": "string", "enum": ["b64_json"], "default": "b64_json"},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "jpg", "webp"], "default": "png"},
        "output_compression": {**_INTEGER, "minimum": 0, "maximum": 100, "default": 100},
        "background": {"type": "string", "enum": ["auto", "transparent", "opaque"], "default": "auto"},
        "quality": {"type": "string", "enum": ["auto", "low", "medium", "high"], "default": "auto"},
        "user": _TEXT,
        "negative_prompt": _TEXT,
        "num_inference_steps": {**_INTEGER, "minimum": 1, "maximum": 200},
        "guidance_scale": {**_NUMBER, "minimum": 0, "maximum": 20},
        "true_cfg_scale": {**_NUMBER, "minimum": 0, "maximum": 20},
        "seed": {**_INTEGER, "minimum": 0, "maximum": 2**64 - 1},
        "stream": {"type": "boolean", "default": False, "description": "Answer with server-sent events."},
        "partial_images": {**_INTEGER, "minimum": 0, "maximum": 3, "default": 0},
    },
}


class EditsInput(bentoml.IODescriptor):
    """The read form of one request (or the error reading it raised), and its connection.

    The connection lets the handler notice a client that hangs up while its edit waits or runs.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    media_type: ClassVar[str | None] = "multipart/form-data"
    limits: ClassVar[MultipartLimits]

    form: Form | None = None
    form_error: ApiError | None = None
    connection: Request | None = None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return EDIT_FORM_SCHEMA

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> EditsInput:
        try:
            form = await read_multipart(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                cls.limits,
            )
        except ApiError as error:
            return cls.model_construct(form=None, form_error=error, connection=request)
        except ClientDisconnect:
            # Nobody will read the answer; this keeps BentoML from logging a traceback.
            disconnected = ApiError(
                400, "The client disconnected while sending the request.", code="client_disconnected"
            )
            return cls.model_construct(form=None, form_error=disconnected, connection=request)
        return cls.model_construct(form=form, form_error=None, connection=request)


def edits_input(settings: Settings) -> type[EditsInput]:
    """An :class:`EditsInput` bound to the limits of ``settings``."""
    bound = type("EditsInput", (EditsInput,), {"limits": multipart_limits(settings)})
    # Keeps BentoML from documenting the internal fields as JSON-encoded form parts.
    bound.multipart_fields = list(EditsInput.model_fields)
    return bound


class ImageItem(bentoml.IODescriptor):
    b64_json: str
    url: None = None
    revised_prompt: None = None


class ImagesResponse(bentoml.IODescriptor):
    """The documented success body; the handler writes it directly (see :mod:`imgedit.responses`)."""

    created: int
    data: list[ImageItem]
    output_format: Literal["png", "jpeg", "webp"]
    size: str
    background: Literal["transparent", "opaque"]
