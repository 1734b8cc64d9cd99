"""The field table drives the parser, the OpenAPI form and the docs' API page."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from imgedit.api.fields import FIELDS, MODEL_FIELDS, markdown_table
from imgedit.api.openapi import openapi_form
from imgedit.api.parse import EditRequest, RequestLimits, parse_edit_request
from imgedit.edit import EditOptions
from imgedit.media.sizing import SizeLimits
from tests.helpers import Refused, form, status_of

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"
LIMITS = RequestLimits(
    max_images=4, max_prompt_chars=100, size=SizeLimits(max_side=2048, max_pixels=1024 * 1024), model_names=("m",)
)
NUMBERS = [field for field in FIELDS if field.kind in ("integer", "number")]
OPTIONS = {option.name for option in dataclasses.fields(EditOptions)}


def test_the_api_page_shows_the_table():
    text = API_PAGE.read_text()
    section = re.search(r"<!-- fields -->\n(.*?)<!-- /fields -->", text, re.DOTALL)
    assert section, "docs/api.md lacks the <!-- fields --> section"
    assert section.group(1) == markdown_table(), "run `python -m devtools.doc_tables --write`"


def test_the_openapi_form_documents_every_field_with_its_bounds():
    schema = openapi_form()
    assert list(schema["properties"]) == [field.name for field in FIELDS]
    assert schema["required"] == ["prompt"]
    for field in FIELDS:
        documented = schema["properties"][field.name]
        assert documented["description"]
        if field.low is not None:
            assert (documented["minimum"], documented["maximum"]) == (field.low, field.high)
        if field.kind == "choice":
            assert documented["enum"] == list(field.spellings)
        if field.default is not None:
            assert documented["default"] == field.default
    assert {"mask", "strength", "image_guidance_scale"} <= set(schema["properties"])


def test_every_field_lands_in_the_request_or_is_only_checked():
    stored = {option.name for option in dataclasses.fields(EditOptions)}
    stored |= {request_field.name for request_field in dataclasses.fields(EditRequest)} - {"options", "sources"}
    names = {field.name for field in FIELDS} - {"image", "url", "moderation"}
    assert names == stored
    assert {option.name for option in dataclasses.fields(EditOptions)} <= MODEL_FIELDS


@pytest.mark.parametrize("field", NUMBERS, ids=lambda field: field.name)
def test_the_parser_takes_exactly_the_declared_range(field):
    def parsed(value: float) -> object:
        request = parse_edit_request(form(("image", b"x"), ("prompt", "p"), (field.name, f"{value}")), LIMITS)
        holder = request.options if field.name in OPTIONS else request
        return getattr(holder, field.name)

    assert parsed(field.low) == field.low and parsed(field.high) == field.high
    step = 1 if field.kind == "integer" else 0.001
    for outside in (field.low - step, field.high + step):
        with pytest.raises(Refused) as caught:
            parsed(outside)
        assert (status_of(caught.value), caught.value.param) == (400, field.name)


@pytest.mark.parametrize("field", [field for field in FIELDS if field.kind == "choice"], ids=lambda field: field.name)
def test_the_parser_takes_exactly_the_declared_choices(field):
    for spelling in field.spellings:
        request = parse_edit_request(form(("image", b"x"), ("prompt", "p"), (field.name, spelling.upper())), LIMITS)
        holder = request.options if field.name in OPTIONS else request
        expected = dict(field.aliases).get(spelling, spelling)
        assert field.name in ("moderation",) or getattr(holder, field.name) == expected
    with pytest.raises(Refused) as caught:
        parse_edit_request(form(("image", b"x"), ("prompt", "p"), (field.name, "surely-not")), LIMITS)
    assert caught.value.param == field.name
    assert ", ".join(field.spellings) in caught.value.message


def test_defaults_come_from_the_table():
    request = parse_edit_request(form(("image", b"x"), ("prompt", "p")), LIMITS)
    for field in FIELDS:
        if field.default is None or field.name in ("size", "moderation"):
            continue
        holder = request.options if field.name in OPTIONS else request
        assert getattr(holder, field.name) == field.default, field.name
    assert request.size is None  # size=auto
