"""JSON a client wrote: what parses, and what is refused with a 400 naming the field."""

from __future__ import annotations

import pytest

from imgedit.api.json_text import MAX_DEPTH, check_value, parse_json
from imgedit.errors import RequestError


def refusal(text: bytes | str, param: str | None = None) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_json(text, param, "The text")
    return caught.value


def test_valid_json_is_returned_as_is():
    text = '{"prompt": "caf\\u00e9 \\ud83d\\ude00", "n": 2, "scale": 0.5, "images": [{"image_url": "data:,x"}]}'
    assert parse_json(text, None, "The text") == {
        "prompt": "café \U0001f600",
        "n": 2,
        "scale": 0.5,
        "images": [{"image_url": "data:,x"}],
    }


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\ud83d", "\\ude00y"])
def test_a_lone_surrogate_is_refused_naming_the_field(escape):
    error = refusal('{"prompt": "' + escape + '", "n": 1}')
    assert (error.param, error.code) == ("prompt", "invalid_text")
    assert "surrogate" in error.message


def test_a_lone_surrogate_in_raw_bytes_is_refused_too():
    # json.loads decodes bytes with "surrogatepass", so a CESU-8 surrogate arrives as one.
    assert refusal(b'{"prompt": "\xed\xa0\x80"}').param == "prompt"


def test_surrogates_deep_inside_a_field_or_in_a_key_are_refused():
    assert refusal('{"lora": [{"name": "a", "x": ["\\udc00"]}]}').param == "lora"
    assert refusal('{"images": [{"\\ud800": 1}]}').param == "images"
    assert refusal('{"\\ud800": 1}').param is None


def test_an_integer_beyond_a_double_is_refused_naming_the_field():
    error = refusal('{"guidance_scale": 1' + "0" * 400 + "}")
    assert (error.param, error.code) == ("guidance_scale", "invalid_value")
    assert refusal("-" + "9" * 309, "lora").param == "lora"
    assert parse_json("9" * 308, "seed", "The text") == int("9" * 308)


@pytest.mark.parametrize("text", ["[" * 10_000 + "]" * 10_000, '{"a": ' + "{" * 5_000])
def test_nesting_past_the_parser_is_invalid_json(text):
    assert refusal(text, "lora").code == "invalid_json"


def test_nesting_past_max_depth_is_refused():
    deep = "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2)
    assert refusal('{"lora": ' + deep + "}").param == "lora"
    check_value([[]] * 3, "lora")


@pytest.mark.parametrize("text", ["NaN", '{"n": Infinity}', "-Infinity", "{", "", b"\xff"])
def test_what_is_not_json_is_invalid_json(text):
    error = refusal(text, "lora")
    assert (error.param, error.code) == ("lora", "invalid_json")
    assert error.message.startswith("The text is not valid JSON")
