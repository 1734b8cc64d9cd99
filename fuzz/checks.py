"""What a parsed result promises, checked on every input a parser accepts.

A parser that returns has vouched for its result: the layers after it trust
every field to be in range and every text to be text. These checks state that
trust, each as a :func:`~fuzz.outcome.expect` whose sentence names the promise.
"""

from __future__ import annotations

import math
from typing import Any

from fuzz.outcome import expect
from imgedit.api.fields import FIELDS
from imgedit.api.lora import MAX_CHOICES, MAX_SCALE
from imgedit.api.multipart import Form, MultipartLimits
from imgedit.api.parse import EditRequest, RequestLimits
from imgedit.edit import LORA_NAME, LoraChoice
from imgedit.media.inputs import ImageSource
from imgedit.media.sizing import MIN_SIDE


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: no lone surrogate, which no tokenizer, log line or JSON answer takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_form(form: Form, body: bytes, limits: MultipartLimits) -> None:
    """A form read from ``body`` keeps within ``limits``, and its parts hold no more than the body did."""
    expect(len(form.parts) <= limits.max_parts, "read_multipart keeps to max_parts", len(form.parts))
    expect(len(body) <= limits.max_body_bytes, "read_multipart keeps to max_body_bytes", len(body))
    for part in form.parts:
        expect(len(part.data) <= limits.part_bytes(part.name), "read_multipart keeps to part_bytes", part.name)
    expect(sum(len(part.data) for part in form.parts) <= len(body), "form parts come from the body")


def check_lora(choices: tuple[LoraChoice, ...], *, texts: bool = True) -> None:
    """LoRA choices as :func:`~imgedit.api.lora.parse_lora` documents them; with ``texts``, paths are text.

    ``texts=False`` for values that no reader has checked (see :func:`check_request`).
    """
    expect(len(choices) <= MAX_CHOICES, "parse_lora keeps to MAX_CHOICES", len(choices))
    names = [choice.name for choice in choices if choice.name is not None]
    expect(len(set(names)) == len(names), "parse_lora refuses an adapter named twice", names)
    for choice in choices:
        expect(choice.name is not None or choice.path is not None, "a LoRA choice has a name or a path", choice)
        if choice.name is not None:
            expect(bool(LORA_NAME.fullmatch(choice.name)), "a LoRA name is a LORA_NAME", choice.name)
        if choice.scale is not None:
            expect(isinstance(choice.scale, float), "a LoRA scale is a float", choice.scale)
            expect(math.isfinite(choice.scale) and abs(choice.scale) <= MAX_SCALE, "a LoRA scale is in range", choice)
        if choice.path is not None:
            expect(bool(choice.path.strip()), "a LoRA path is not blank", choice.path)
            expect(not texts or is_text(choice.path), "a LoRA path is text", choice.path)


def check_request(request: EditRequest, limits: RequestLimits, *, texts: bool = True) -> None:
    """Every field of a parsed request is of its type and within its bounds; with ``texts``, every text is text.

    JSON can write lone surrogates, and the server's JSON reader refuses them before the parser sees
    them: ``texts=False`` for bodies made without the reader.
    """
    options = request.options
    for field in FIELDS:
        holder: Any = options if hasattr(options, field.name) else request
        if field.kind in ("images", "urls", "file", "lora") or not hasattr(holder, field.name):
            continue
        value = getattr(holder, field.name)
        if value is None:
            continue
        if field.kind in ("integer", "number"):
            _check_number(field.name, field.kind, value, field.low, field.high)
        elif field.kind == "choice":
            expect(value in field.choices, "a choice is one of the field's choices", (field.name, value))
        elif field.kind == "boolean":
            expect(isinstance(value, bool), "a flag is a bool", (field.name, value))
        elif field.kind == "text":
            expect(isinstance(value, str), "a text field is a str", field.name)
            expect(not texts or is_text(value), "a text field is text", field.name)
            expect(value != "", "an empty text counts as absent", field.name)
    expect(bool(options.prompt.strip()), "a request has a prompt", options.prompt)
    for name, text in (("prompt", options.prompt), ("negative_prompt", options.negative_prompt)):
        expect(text is None or len(text) <= limits.max_prompt_chars, "a prompt keeps to max_prompt_chars", name)
    names = (*limits.model_names, *limits.lora_names())
    expect(request.model is None or request.model in names, "model names a served model", request.model)
    if request.size is not None:
        width, height = request.size.width, request.size.height
        within = all(MIN_SIDE <= side <= limits.size.max_side for side in (width, height))
        expect(within and width * height <= limits.size.max_pixels, "a size is within the limits", request.size)
    expect(1 <= len(request.sources) <= limits.max_images, "a request has 1 to max_images images", request.sources)
    for source in (*request.sources, *((request.mask,) if request.mask is not None else ())):
        _check_source(source, texts)
    check_lora(request.lora, texts=texts)


def _check_number(name: str, kind: str, value: Any, low: float | None, high: float | None) -> None:
    expect(not isinstance(value, bool), "a number is no bool", (name, value))
    expect(isinstance(value, int) if kind == "integer" else isinstance(value, int | float), "a number's type", name)
    assert low is not None and high is not None, f"{name} declares its bounds"
    expect(low <= value <= high, "a number is within its field's bounds", (name, value))


def _check_source(source: ImageSource, texts: bool) -> None:
    expect((source.data is None) != (source.url is None), "an image source is data or a URL", source.param)
    if source.url is not None:
        expect(source.url == source.url.strip() and source.url != "", "a URL is stripped and not empty", source.url)
        expect(not texts or is_text(source.url), "a URL is text", source.url)
