"""Validate a parsed form into an :class:`EditRequest`.

Every field arrives as a multipart string and is checked here, before any image
is decoded or URL fetched; a bad value becomes a 400 naming the field. Text is
kept verbatim: a prompt of ``123``, ``null`` or ``"quoted"`` is that text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from imgedit.errors import ApiError, invalid
from imgedit.multipart import Form, Part
from imgedit.sizing import Size, SizeLimits, parse_size

IMAGE_FIELDS = ("image", "image[]")
URL_FIELDS = ("url", "url[]")
MASK_FIELD = "mask"
MAX_SEED = 2**64 - 1
MAX_N = 10

OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["auto", "transparent", "opaque"]
Quality = Literal["auto", "low", "medium", "high"]
T = TypeVar("T")

_INTEGER = re.compile(r"\s*[+-]?\d{1,30}\s*")
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class ImageSource:
    """One input image before loading: uploaded ``data`` or a ``url`` to fetch.

    ``param`` names it in errors: ``image[0]``, ``url[1]``...
    """

    param: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class RequestLimits:
    """What this server accepts; the model's own caps are folded in by the caller."""

    max_images: int
    max_prompt_chars: int
    size: SizeLimits
    model_names: tuple[str, ...]


@dataclass(frozen=True)
class EditRequest:
    """A validated ``POST /v1/images/edits`` request. Unset extensions are None."""

    prompt: str
    sources: tuple[ImageSource, ...]
    mask: bytes | None = None
    model: str | None = None
    n: int = 1
    size: Size | None = None
    output_format: OutputFormat = "png"
    output_compression: int = 100
    background: Background = "auto"
    quality: Quality = "auto"
    user: str | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    image_guidance_scale: float | None = None
    strength: float | None = None
    seed: int | None = None
    stream: bool = False
    partial_images: int = 0


def parse_edit_request(form: Form, limits: RequestLimits) -> EditRequest:
    """Check every field of ``form`` and build the request.

    Raises:
        ApiError: 400 naming the field (``param``) for any malformed or
            out-of-range value; 422 when there is neither ``image`` nor ``url``.
    """
    fields = _Fields(form)
    masks = form.named(MASK_FIELD)
    if len(masks) > 1:
        raise invalid(MASK_FIELD, "Field 'mask' was given more than once; send one mask.", code="duplicate_parameter")
    stream = fields.boolean("stream", default=False)
    response_format = fields.choice("response_format", ("b64_json",), "b64_json")
    del response_format  # only one value is possible; parsed to reject the others
    prompt = fields.text("prompt", limits.max_prompt_chars)
    if prompt is None or not prompt.strip():
        raise invalid("prompt", "Field 'prompt' is required and must not be empty.", code="missing_required_parameter")
    model = fields.text("model", 256)
    if model is not None and model not in limits.model_names:
        served = ", ".join(repr(name) for name in limits.model_names)
        raise invalid(
            "model", f"Model {model!r} is not served here; this server serves {served}.", code="model_not_found"
        )
    output_format = fields.choice("output_format", ("png", "jpeg", "jpg", "webp"), "png")
    background = fields.choice("background", ("auto", "transparent", "opaque"), "auto")
    if background == "transparent" and output_format in ("jpeg", "jpg"):
        raise invalid(
            "background", "background=transparent needs output_format png or webp; JPEG has no alpha channel."
        )
    size_text = fields.text("size", 64)

    request = EditRequest(
        prompt=prompt,
        sources=_image_sources(form, limits.max_images),
        mask=masks[0].data if masks else None,
        model=model,
        n=fields.integer("n", 1, MAX_N) or 1,
        size=parse_size(size_text, limits.size) if size_text is not None else None,
        output_format="jpeg" if output_format == "jpg" else output_format,  # type: ignore[arg-type]
        output_compression=_default(fields.integer("output_compression", 0, 100), 100),
        background=background,  # type: ignore[arg-type]
        quality=fields.choice("quality", ("auto", "low", "medium", "high"), "auto"),  # type: ignore[arg-type]
        user=fields.text("user", 512),
        negative_prompt=fields.text("negative_prompt", limits.max_prompt_chars) or None,
        num_inference_steps=fields.integer("num_inference_steps", 1, 200),
        guidance_scale=fields.decimal("guidance_scale", 0.0, 20.0),
        true_cfg_scale=fields.decimal("true_cfg_scale", 0.0, 20.0),
        image_guidance_scale=fields.decimal("image_guidance_scale", 0.0, 20.0),
        strength=fields.decimal("strength", 0.0, 1.0),
        seed=fields.integer("seed", 0, MAX_SEED),
        partial_images=_default(fields.integer("partial_images", 0, 3), 0),
        stream=stream,
    )
    return request


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


def _image_sources(form: Form, max_images: int) -> tuple[ImageSource, ...]:
    uploads = form.named(*IMAGE_FIELDS)
    urls = form.named(*URL_FIELDS)
    if not uploads and not urls:
        raise ApiError(422, "Field 'image' or 'url' is required", param="image", code="missing_required_parameter")
    count = len(uploads) + len(urls)
    if count > max_images:
        what = "a single input image" if max_images == 1 else f"at most {max_images} input images"
        raise invalid("image", f"Received {count} input images; this model accepts {what}.", code="too_many_images")
    sources = [ImageSource(f"image[{index}]", data=part.data) for index, part in enumerate(uploads)]
    for index, part in enumerate(urls):
        url = _decode(part, f"url[{index}]").strip()
        if not url:
            raise invalid(f"url[{index}]", "An empty URL was given.")
        sources.append(ImageSource(f"url[{index}]", url=url))
    return tuple(sources)


def _decode(part: Part, param: str) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(param, f"Field '{param}' is not valid UTF-8 text.") from None


class _Fields:
    """Typed access to the scalar fields of a form; each may appear at most once."""

    def __init__(self, form: Form) -> None:
        self._form = form

    def text(self, name: str, max_chars: int) -> str | None:
        """The raw text of ``name``, or None when absent. An empty value counts as absent."""
        parts = self._form.named(name)
        if not parts:
            return None
        if len(parts) > 1:
            raise invalid(
                name, f"Field '{name}' was given {len(parts)} times; send it once.", code="duplicate_parameter"
            )
        value = _decode(parts[0], name)
        if len(value) > max_chars:
            raise invalid(name, f"Field '{name}' is {len(value)} characters long; the maximum is {max_chars}.")
        return value if value != "" else None

    def _parsed(self, name: str, parse: Callable[[str], T | None], expected: str) -> T | None:
        value = self.text(name, 100)
        if value is None:
            return None
        parsed = parse(value)
        if parsed is None:
            raise invalid(name, f"Invalid value for '{name}': {value!r}; expected {expected}.")
        return parsed

    def integer(self, name: str, low: int, high: int) -> int | None:
        number = self._parsed(name, lambda v: int(v) if _INTEGER.fullmatch(v) else None, "an integer")
        if number is not None and not low <= number <= high:
            raise invalid(name, f"Invalid value for '{name}': {number}; expected an integer from {low} to {high}.")
        return number

    def decimal(self, name: str, low: float, high: float) -> float | None:
        def parse(value: str) -> float | None:
            number = float(value) if _DECIMAL.fullmatch(value) else math.nan
            return number if math.isfinite(number) else None

        number = self._parsed(name, parse, "a number")
        if number is not None and not low <= number <= high:
            raise invalid(name, f"Invalid value for '{name}': {number:g}; expected a number from {low:g} to {high:g}.")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        def parse(value: str) -> bool | None:
            lowered = value.strip().lower()
            return True if lowered in _TRUE else False if lowered in _FALSE else None

        value = self._parsed(name, parse, "true or false")
        return default if value is None else value

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        def parse(value: str) -> str | None:
            lowered = value.strip().lower()
            return lowered if lowered in allowed else None

        value = self._parsed(name, parse, "one of " + ", ".join(allowed))
        return default if value is None else value
