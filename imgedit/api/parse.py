"""Validate a request body into an :class:`EditRequest`, field by field, from the field table.

Every field is checked here, before any image is decoded or URL fetched; a bad
value becomes a 400 naming the field. What each field accepts is declared
once, in :mod:`imgedit.api.fields`; the two body encodings differ only in how
a value is written:

* multipart fields arrive as strings: text is kept verbatim (a prompt of
  ``123``, ``null`` or ``"quoted"`` is that text), numbers, flags and choices
  are read from it;
* a JSON body carries typed values (a wrong type is a 400 naming the field,
  ``null`` counts as absent, unknown keys are ignored), its images as
  ``images: [{"image_url": ...}]`` and its mask as ``{"image_url": ...}``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

from imgedit.api.errors import ApiError
from imgedit.api.fields import FIELDS, FIELDS_BY_NAME, Field
from imgedit.api.lora import parse_lora
from imgedit.api.multipart import Form, Part
from imgedit.edit import EditOptions, LoraChoice
from imgedit.errors import RequestError, invalid
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
#: JSON bodies: the field each key of an image object names.
_IMAGE_URL, _FILE_ID = "image_url", "file_id"


@dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """What this server accepts; the model's own caps are folded in by the caller.

    Attributes:
        max_images: input images per request.
        max_prompt_chars: the longest prompt and negative prompt.
        size: the output size limits.
        model_names: the names ``model`` may give.
        lora_names: the LoRAs loaded now, which ``model`` may name too (they change while serving).
    """

    max_images: int
    max_prompt_chars: int
    size: SizeLimits
    model_names: tuple[str, ...]
    lora_names: Callable[[], Collection[str]] = dataclasses.field(default=lambda: ())


#: How the answer carries its images.
ResponseFormat = Literal["b64_json", "url"]


@dataclass(frozen=True, kw_only=True)
class EditRequest:
    """A validated ``POST /v1/images/edits`` request: what to ask of the model, and how to answer.

    Attributes:
        options: the model's part (prompt, ``n``, seed, steps, guidance...).
        sources: the input images, uploads first, then URLs.
        mask: where the mask comes from; None without one.
        size: the requested size; None for ``auto``.
    """

    options: EditOptions
    sources: tuple[ImageSource, ...]
    mask: ImageSource | None = None
    model: str | None = None
    size: Size | None = None
    output_format: OutputFormat = "png"
    output_compression: int = 100
    background: Background = "auto"
    user: str | None = None
    safety_identifier: str | None = None
    lora: tuple[LoraChoice, ...] = ()
    stream: bool = False
    partial_images: int = 0
    response_format: ResponseFormat = "b64_json"
    webhook_url: str | None = None


_ANSWER_NAMES = frozenset(answer.name for answer in fields(EditRequest)) - {"options", "sources", "mask"}


class _Body(Protocol):
    """One request body, read field by field."""

    def value(self, field: Field, max_chars: int) -> Any:
        """``field``'s value as its type (text, int, float or bool), unchecked against bounds; None when absent."""

    def sources(self, max_images: int) -> tuple[ImageSource, ...]:
        """The input images, in order; at most ``max_images``."""

    def mask(self) -> ImageSource | None:
        """Where the mask comes from, if there is one."""


def parse_edit_request(body: Form | dict[str, Any], limits: RequestLimits) -> EditRequest:
    """Check every field of a multipart ``Form`` or a JSON object and build the request.

    Raises:
        RequestError: naming the field (``param``) for any malformed or out-of-range value.
        ApiError: 422 when there is no image at all.
    """
    reader: _Body = _FormBody(body) if isinstance(body, Form) else _JsonBody(body)
    mask = reader.mask()
    values: dict[str, Any] = {}
    for field in FIELDS:
        if field.kind in _FILE_KINDS:
            continue
        value = reader.value(field, limits.max_prompt_chars if field.max_chars is None else field.max_chars)
        value = _checked(field, field.default if value is None else value, limits)
        _RULES.get(field.name, _no_rule)(value, values, limits)
        values[field.name] = value
    options = EditOptions(**{name: value for name, value in values.items() if name in _OPTION_NAMES})
    # A field stored in neither dataclass (moderation: one meaning here) is checked, then dropped.
    answer = {name: value for name, value in values.items() if name in _ANSWER_NAMES}
    return EditRequest(options=options, sources=reader.sources(limits.max_images), mask=mask, **answer)


# -- one value, whatever the encoding ----------------------------------------------------------------


def _checked(field: Field, value: Any, limits: RequestLimits) -> Any:
    """``value`` of ``field`` (typed) checked against its bounds or choices, in the form the request stores."""
    if field.kind == "lora":
        return parse_lora(value) if value is not None else ()
    if value is None or field.kind in ("text", "boolean"):
        return value
    if field.kind == "size":
        return parse_size(value, limits.size)
    if field.kind in ("integer", "number"):
        return _in_range(field, value)
    spelling = value.strip().lower()
    if spelling not in field.spellings:
        raise _invalid_value(field, value, "one of " + ", ".join(field.spellings))
    return dict(field.aliases).get(spelling, spelling)


def _in_range(field: Field, number: float) -> Any:
    low, high = field.low, field.high
    assert low is not None and high is not None, f"{field.name} declares its bounds"
    if not low <= number <= high:
        # Written back as the client sent it, cut short: a JSON integer may have hundreds of digits.
        written = _shortened(str(number) if isinstance(number, int) else f"{number:g}")
        expected = (
            f"an integer from {low} to {high}" if field.kind == "integer" else f"a number from {low:g} to {high:g}"
        )
        raise invalid(field.name, f"Invalid value for '{field.name}': {written}; expected {expected}.")
    return number


def _shortened(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _invalid_value(field: Field, written: object, expected: str) -> RequestError:
    return invalid(field.name, f"Invalid value for '{field.name}': {written!r}; expected {expected}.")


def _too_many_images(param: str, count: int, max_images: int) -> RequestError:
    what = "a single input image" if max_images == 1 else f"at most {max_images} input images"
    return invalid(param, f"Received {count} input images; this model accepts {what}.", code="too_many_images")


def _no_image() -> ApiError:
    return ApiError(422, "Field 'image' or 'url' is required", param="image", code="missing_required_parameter")


# -- rules between fields -------------------------------------------------------------------------

#: Checks a field's value against the request (``values`` holds the fields before it, in table order).
Rule = Callable[[Any, dict[str, Any], RequestLimits], None]


def _no_rule(value: Any, values: dict[str, Any], limits: RequestLimits) -> None:
    return None


def _require_prompt(prompt: str | None, values: dict[str, Any], limits: RequestLimits) -> None:
    if prompt is None or not prompt.strip():
        raise invalid("prompt", "Field 'prompt' is required and must not be empty.", code="missing_required_parameter")


def _served_model(model: str | None, values: dict[str, Any], limits: RequestLimits) -> None:
    if model is not None and model not in limits.model_names and model not in limits.lora_names():
        served = ", ".join(repr(name) for name in (*limits.model_names, *limits.lora_names()))
        raise invalid(
            "model", f"Model {model!r} is not served here; this server serves {served}.", code="model_not_found"
        )


def _background_fits_format(background: str, values: dict[str, Any], limits: RequestLimits) -> None:
    if background == "transparent" and values["output_format"] == "jpeg":
        raise invalid(
            "background", "background=transparent needs output_format png or webp; JPEG has no alpha channel."
        )


def _no_links_in_streams(stream: bool, values: dict[str, Any], limits: RequestLimits) -> None:
    if stream and values.get("response_format") == "url":
        raise invalid(
            "response_format",
            "Streamed images come as base64; leave 'response_format' out or set it to 'b64_json' with 'stream'.",
        )


_RULES: dict[str, Rule] = {
    "prompt": _require_prompt,
    "model": _served_model,
    "background": _background_fits_format,
    "stream": _no_links_in_streams,
}


# -- multipart ------------------------------------------------------------------------------------


class _FormBody:
    """A multipart form: every field a string part, images as files or URL strings."""

    def __init__(self, form: Form) -> None:
        self.form = form

    def value(self, field: Field, max_chars: int) -> Any:
        text = self._text(field.name, max_chars)
        if text is None or field.kind in ("text", "size", "choice", "lora"):
            return text
        if field.kind == "integer":
            number = int(text) if _INTEGER.fullmatch(text) else None
            return _parsed(field, text, number, "an integer")
        if field.kind == "number":
            decimal = float(text) if _DECIMAL.fullmatch(text) else math.nan
            return _parsed(field, text, decimal if math.isfinite(decimal) else None, "a number")
        lowered = text.strip().lower()
        return _parsed(field, text, True if lowered in _TRUE else False if lowered in _FALSE else None, "true or false")

    def _text(self, name: str, max_chars: int) -> str | None:
        """The raw text of ``name``, or None when absent; it may appear once. An empty value counts as absent."""
        parts = self.form.named(name)
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

    def sources(self, max_images: int) -> tuple[ImageSource, ...]:
        uploads = self.form.named(*IMAGE_FIELDS)
        urls = self.form.named(*URL_FIELDS)
        if not uploads and not urls:
            raise _no_image()
        if len(uploads) + len(urls) > max_images:
            raise _too_many_images("image", len(uploads) + len(urls), max_images)
        sources = [ImageSource(f"image[{index}]", data=part.data) for index, part in enumerate(uploads)]
        for index, part in enumerate(urls):
            sources.append(_url_source(f"url[{index}]", _decode(part, f"url[{index}]")))
        return tuple(sources)

    def mask(self) -> ImageSource | None:
        masks = self.form.named(MASK_FIELD)
        if len(masks) > 1:
            raise invalid(
                MASK_FIELD, "Field 'mask' was given more than once; send one mask.", code="duplicate_parameter"
            )
        return ImageSource(MASK_FIELD, data=masks[0].data) if masks else None


def _parsed(field: Field, text: str, value: Any, expected: str) -> Any:
    if value is None:
        raise _invalid_value(field, text, expected)
    return value


def _decode(part: Part, param: str) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(param, f"Field '{param}' is not valid UTF-8 text.") from None


def _url_source(param: str, url: str) -> ImageSource:
    url = url.strip()
    if not url:
        raise invalid(param, "An empty URL was given.")
    return ImageSource(param, url=url)


# -- JSON -----------------------------------------------------------------------------------------

#: What each kind of scalar field must be in JSON, and how the error names it.
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "text": ((str,), "a string"),
    "size": ((str,), "a string"),
    "choice": ((str,), "a string"),
    "integer": ((int,), "an integer"),
    "number": ((int, float), "a number"),
    "boolean": ((bool,), "true or false"),
    "lora": ((str, list, dict), "a string, a list or an object"),
}


class _JsonBody:
    """A JSON object: typed values; images and the mask as ``{"image_url": ...}`` objects."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def value(self, field: Field, max_chars: int) -> Any:
        value = self.body.get(field.key)
        if value is None:
            return None
        types, expected = _JSON_TYPES[field.kind]
        # bool is an int in Python, but true is no number in JSON.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise invalid(field.name, f"Invalid type for '{field.name}': expected {expected}, got {_json_type(value)}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid_value(field, value, "a finite number")
        if isinstance(value, str) and len(value) > max_chars:
            raise invalid(
                field.name, f"Field '{field.name}' is {len(value)} characters long; the maximum is {max_chars}."
            )
        return value if value != "" else None  # an empty value counts as absent, as in a form

    def sources(self, max_images: int) -> tuple[ImageSource, ...]:
        images = self._list(FIELDS_BY_NAME["image"].key)
        urls = self._list(FIELDS_BY_NAME["url"].key)
        if not images and not urls:
            raise _no_image()
        if len(images) + len(urls) > max_images:
            raise _too_many_images("images", len(images) + len(urls), max_images)
        sources = [_image_object(f"images[{index}]", item) for index, item in enumerate(images)]
        for index, url in enumerate(urls):
            if not isinstance(url, str):
                raise invalid(f"url[{index}]", f"Invalid type for 'url[{index}]': expected a string.")
            sources.append(_url_source(f"url[{index}]", url))
        return tuple(sources)

    def mask(self) -> ImageSource | None:
        mask = self.body.get(MASK_FIELD)
        return None if mask is None else _image_object(MASK_FIELD, mask)

    def _list(self, key: str) -> list[Any]:
        """``key``'s items: a list as it is, one value as a list of it, nothing when absent."""
        value = self.body.get(key)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]


def _image_object(param: str, item: object) -> ImageSource:
    """``{"image_url": URL}`` (or ``{"image_url": {"url": URL}}``, as chat messages write it) as a source."""
    if isinstance(item, dict) and item.get(_FILE_ID) is not None and item.get(_IMAGE_URL) is None:
        raise invalid(
            param.split("[")[0],
            f"'{param}' names a file_id; file ids need OpenAI's Files API, which this server does not have. "
            "Send the image as 'image_url' (a data: URL or an http(s) URL) instead.",
            code="unsupported_file_id",
        )
    url = item.get(_IMAGE_URL) if isinstance(item, dict) else None
    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str):
        raise invalid(param, f"'{param}' must be an object with an 'image_url' string (a data: or http(s) URL).")
    return _url_source(param, url)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
