"""Validate a request body into an :class:`EditRequest`, field by field, from the field table.

Every field is checked here, before any image is decoded or URL fetched; a bad
value becomes a 400 naming the field. Multipart fields arrive as strings: text
is kept verbatim (a prompt of ``123``, ``null`` or ``"quoted"`` is that text),
numbers, flags and choices are read from it. What each field accepts is
declared once, in :mod:`imgedit.api.fields`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from imgedit.api.fields import FIELDS, FIELDS_BY_NAME, Field
from imgedit.api.multipart import Form, Part
from imgedit.edit import EditOptions
from imgedit.errors import ApiError, invalid
from imgedit.media.encode import Background, OutputFormat
from imgedit.media.inputs import ImageSource
from imgedit.media.sizing import Size, SizeLimits, parse_size

IMAGE_FIELDS = FIELDS_BY_NAME["image"].names
URL_FIELDS = FIELDS_BY_NAME["url"].names
MASK_FIELD = FIELDS_BY_NAME["mask"].name
_FILE_KINDS = ("images", "urls", "file")
_OPTION_NAMES = frozenset(option.name for option in fields(EditOptions))

_INTEGER = re.compile(r"\s*[+-]?\d{1,30}\s*")
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class RequestLimits:
    """What this server accepts; the model's own caps are folded in by the caller."""

    max_images: int
    max_prompt_chars: int
    size: SizeLimits
    model_names: tuple[str, ...]


@dataclass(frozen=True)
class EditRequest:
    """A validated ``POST /v1/images/edits`` request: what to ask of the model, and how to answer.

    Attributes:
        options: the model's part (prompt, ``n``, seed, steps, guidance...).
        sources: the input images, uploads first, then URLs.
        mask: the mask's bytes, undecoded.
        size: the requested size; None for ``auto``.
    """

    options: EditOptions
    sources: tuple[ImageSource, ...]
    mask: bytes | None = None
    model: str | None = None
    size: Size | None = None
    output_format: OutputFormat = "png"
    output_compression: int = 100
    background: Background = "auto"
    user: str | None = None
    stream: bool = False
    partial_images: int = 0


_ANSWER_NAMES = frozenset(field.name for field in fields(EditRequest)) - {"options", "sources", "mask"}


def parse_edit_request(form: Form, limits: RequestLimits) -> EditRequest:
    """Check every field of a multipart ``form`` and build the request.

    Raises:
        ApiError: 400 naming the field (``param``) for any malformed or
            out-of-range value; 422 when there is neither ``image`` nor ``url``.
    """
    masks = form.named(MASK_FIELD)
    if len(masks) > 1:
        raise invalid(MASK_FIELD, "Field 'mask' was given more than once; send one mask.", code="duplicate_parameter")
    values: dict[str, Any] = {}
    for field in FIELDS:
        if field.kind in _FILE_KINDS:
            continue
        text = _text(form, field.name, _max_chars(field, limits))
        if text is None:  # absent: the default, which is written as the wire writes it
            text = None if field.default is None else _wire_text(field.default)
        value = None if text is None else _from_text(field, text, limits)
        _RULES.get(field.name, _no_rule)(value, values, limits)
        values[field.name] = value
    return _request(values, _image_sources(form, limits.max_images), masks[0].data if masks else None)


def _request(values: dict[str, Any], sources: tuple[ImageSource, ...], mask: bytes | None) -> EditRequest:
    """The request from checked ``values`` by field name.

    Each value goes where its name is declared: :class:`EditOptions` or
    :class:`EditRequest`. A field in neither (``response_format``, which has one
    possible value) is checked, then dropped.
    """
    options = EditOptions(**{name: value for name, value in values.items() if name in _OPTION_NAMES})
    answer = {name: value for name, value in values.items() if name in _ANSWER_NAMES}
    return EditRequest(options=options, sources=sources, mask=mask, **answer)


# -- one field ----------------------------------------------------------------------------------


def _wire_text(value: object) -> str:
    """``value`` as a multipart field would carry it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _max_chars(field: Field, limits: RequestLimits) -> int:
    return limits.max_prompt_chars if field.max_chars is None else field.max_chars


def _text(form: Form, name: str, max_chars: int) -> str | None:
    """The raw text of ``name``, or None when absent; it may appear once. An empty value counts as absent."""
    parts = form.named(name)
    if not parts:
        return None
    if len(parts) > 1:
        raise invalid(name, f"Field '{name}' was given {len(parts)} times; send it once.", code="duplicate_parameter")
    value = _decode(parts[0], name)
    if len(value) > max_chars:
        raise invalid(name, f"Field '{name}' is {len(value)} characters long; the maximum is {max_chars}.")
    return value if value != "" else None


def _decode(part: Part, param: str) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(param, f"Field '{param}' is not valid UTF-8 text.") from None


def _from_text(field: Field, text: str, limits: RequestLimits) -> Any:
    """The value of ``field`` written as ``text``, checked against its bounds or choices."""
    if field.kind == "text":
        return text
    if field.kind == "size":
        return parse_size(text, limits.size)
    if field.kind == "integer":
        number = int(text) if _INTEGER.fullmatch(text) else None
        return _in_range(field, _parsed(field, text, number, "an integer"))
    if field.kind == "number":
        decimal = float(text) if _DECIMAL.fullmatch(text) else math.nan
        return _in_range(field, _parsed(field, text, decimal if math.isfinite(decimal) else None, "a number"))
    lowered = text.strip().lower()
    if field.kind == "boolean":
        flag = True if lowered in _TRUE else False if lowered in _FALSE else None
        return _parsed(field, text, flag, "true or false")
    spelling = lowered if lowered in field.spellings else None
    choice = _parsed(field, text, spelling, "one of " + ", ".join(field.spellings))
    return dict(field.aliases).get(choice, choice)


def _parsed(field: Field, text: str, value: Any, expected: str) -> Any:
    if value is None:
        raise invalid(field.name, f"Invalid value for '{field.name}': {text!r}; expected {expected}.")
    return value


def _in_range(field: Field, number: float) -> Any:
    low, high = field.low, field.high
    assert low is not None and high is not None, f"{field.name} declares its bounds"
    if not low <= number <= high:
        if field.kind == "integer":
            expected = f"{number}; expected an integer from {low} to {high}"
        else:
            expected = f"{number:g}; expected a number from {low:g} to {high:g}"
        raise invalid(field.name, f"Invalid value for '{field.name}': {expected}.")
    return number


# -- rules between fields -------------------------------------------------------------------------

#: Checks a field's value against the request (``values`` holds the fields before it, in table order).
Rule = Callable[[Any, dict[str, Any], RequestLimits], None]


def _no_rule(value: Any, values: dict[str, Any], limits: RequestLimits) -> None:
    return None


def _require_prompt(prompt: str | None, values: dict[str, Any], limits: RequestLimits) -> None:
    if prompt is None or not prompt.strip():
        raise invalid("prompt", "Field 'prompt' is required and must not be empty.", code="missing_required_parameter")


def _served_model(model: str | None, values: dict[str, Any], limits: RequestLimits) -> None:
    if model is not None and model not in limits.model_names:
        served = ", ".join(repr(name) for name in limits.model_names)
        raise invalid(
            "model", f"Model {model!r} is not served here; this server serves {served}.", code="model_not_found"
        )


def _background_fits_format(background: str, values: dict[str, Any], limits: RequestLimits) -> None:
    if background == "transparent" and values["output_format"] == "jpeg":
        raise invalid(
            "background", "background=transparent needs output_format png or webp; JPEG has no alpha channel."
        )


_RULES: dict[str, Rule] = {
    "prompt": _require_prompt,
    "model": _served_model,
    "background": _background_fits_format,
}


# -- images ---------------------------------------------------------------------------------------


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
