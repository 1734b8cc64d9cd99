"""The ``lora`` field in every spelling clients use."""

from __future__ import annotations

import pytest

from imgedit.api.lora import parse_lora
from imgedit.edit import LoraChoice
from tests.helpers import Refused, status_of


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ink", (LoraChoice("ink"),)),
        ("ink:0.5", (LoraChoice("ink", 0.5),)),
        (" ink:1 , light:-0.25 ", (LoraChoice("ink", 1.0), LoraChoice("light", -0.25))),
        ([{"name": "ink", "scale": 0.5}, "light:2"], (LoraChoice("ink", 0.5), LoraChoice("light", 2.0))),
        ({"lora_name": "ink", "lora_scale": "0.3"}, (LoraChoice("ink", 0.3),)),
        ('{"adapter": "ink", "scale": 1}', (LoraChoice("ink", 1.0),)),
        ({"name": "ink", "path": "styles/ink.safetensors"}, (LoraChoice("ink", None, "styles/ink.safetensors"),)),
        ({"lora_path": "ink"}, (LoraChoice(None, None, "ink"),)),
        ([], ()),
    ],
)
def test_every_spelling(value, expected):
    assert parse_lora(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "ink:",
        "ink:lots",
        "ink:nan",
        "ink:100",
        "../etc",
        "a b",
        "ink,ink:0.5",
        ",".join(f"a{index}" for index in range(9)),
        "{not json",
        # JSON text nested past the parser's recursion limit, and a scale beyond a double: both were 500s.
        '{"name": "ink", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"name": "ink", "scale": 1' + "0" * 400 + "}",
        [{"name": "ink", "scale": 10**400}],
        "ink:1" + "0" * 400,
        # A name nested deeper than repr() recurses (a direct caller's value; JSON readers stop at 64 levels).
        {"name": nested(5000)},
        {"scale": 1},
        {"name": 5},
        {"name": "ink", "scale": True},
        {"path": ""},
        [7],
        7,
    ],
)
def test_bad_values_are_a_400_naming_lora(value):
    with pytest.raises(Refused) as caught:
        parse_lora(value)
    assert (status_of(caught.value), caught.value.param) == (400, "lora")
    assert caught.value.message.startswith(("Invalid value for 'lora'", "Field 'lora'"))
