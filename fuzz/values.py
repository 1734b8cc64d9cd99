"""Typed values made from fuzz bytes: what clients may write in a form field or a JSON body.

Each function takes atheris' ``FuzzedDataProvider`` and leans towards the values
parsers get wrong: numbers at and past their bounds, integers no double can
hold, NaN, text with lone UTF-16 surrogates or odd whitespace, deep nesting.
"""

from __future__ import annotations

import math
import re
from typing import Any, Protocol, TypeVar

from imgedit.api.fields import FIELDS

T = TypeVar("T")


class Provider(Protocol):
    """The part of ``atheris.FuzzedDataProvider`` the targets use (atheris ships no types)."""

    def ConsumeBytes(self, count: int) -> bytes: ...
    def ConsumeUnicode(self, count: int) -> str: ...
    def ConsumeUnicodeNoSurrogates(self, count: int) -> str: ...
    def ConsumeInt(self, size: int) -> int: ...
    def ConsumeIntInRange(self, low: int, high: int) -> int: ...
    def ConsumeFloat(self) -> float: ...
    def ConsumeBool(self) -> bool: ...
    def PickValueInList(self, values: list[T]) -> T: ...
    def remaining_bytes(self) -> int: ...


#: Texts worth trying in any field: spellings of the fields' choices, sizes, numbers, URLs, LoRAs.
WORDS: tuple[str, ...] = (
    *(spelling for field in FIELDS for spelling in field.spellings),
    *("auto", "1024x1024", "64X64", " 512 x 768 ", "4097x64", "0x0", "99999x1"),
    *("0", "1", "-1", "10", "11", "100", "101", "200", "201", "3", "4", "20", "20.0001", "1e308", "1e309"),
    *("18446744073709551615", "18446744073709551616", "-0", "+5", " 7 ", "1_0", "0x10", ".5", "5.", "1e-400"),
    *("nan", "NaN", "inf", "-Infinity", "true", "false", "yes", "off", "on", "null", "", " ", "\t\n"),
    *("٣", "１２", "²", "true\x00", "data:,x", "data:image/png;base64,iVBORw0KGgo=", "http://127.0.0.1/a.png"),
    *("https://example.com/i.png", "file:///etc/passwd", "style", "style:0.5", "a:1,b:2", '{"name":"style"}'),
    *("\ud800", "a\udfffb", "\u2028", "\ufeff1", "\x85", "\u3000auto\u3000"),
)
#: Numbers near every field's bounds, and past what a double holds.
NUMBERS: tuple[int | float, ...] = (
    *(bound + delta for field in FIELDS for bound in (field.low, field.high) if bound is not None for delta in (-1, 1)),
    *(bound for field in FIELDS for bound in (field.low, field.high) if bound is not None),
    *(0.5, -0.0, 1e-320, 1.7976931348623157e308, math.inf, -math.inf, math.nan, 2**53 + 1, 2**63, 2**64),
    *(2**1023, 2**1024, -(2**1024), 10**308, 10**309, 10**400, -(10**400)),
)


def text(data: Provider, max_chars: int = 48) -> str:
    """A string: a known word, arbitrary Unicode (lone surrogates included), or a word with noise around it."""
    choice = data.ConsumeIntInRange(0, 5)
    if choice == 0:
        return data.PickValueInList(_WORDS)
    if choice == 1:
        return data.ConsumeUnicodeNoSurrogates(data.ConsumeIntInRange(0, max_chars))
    if choice == 2:
        word = data.PickValueInList(_WORDS)
        return data.ConsumeUnicode(2) + word + data.ConsumeUnicode(2)
    if choice == 3:
        return data.PickValueInList(_WORDS).upper()
    return data.ConsumeUnicode(data.ConsumeIntInRange(0, max_chars))


def number(data: Provider) -> int | float:
    """A number: near a bound, huge, NaN or infinite, or whatever the bytes make."""
    choice = data.ConsumeIntInRange(0, 4)
    if choice == 0:
        return data.PickValueInList(_NUMBERS)
    if choice == 1:
        return data.ConsumeIntInRange(-1000, 1000)
    if choice == 2:
        magnitude: int = 10 ** data.ConsumeIntInRange(0, 1200)
        return (-1 if data.ConsumeBool() else 1) * magnitude + data.ConsumeIntInRange(-2, 2)
    if choice == 3:
        return data.ConsumeFloat()
    return data.ConsumeInt(data.ConsumeIntInRange(1, 160))


def scalar(data: Provider) -> Any:
    """None, a boolean, a number or a string."""
    choice = data.ConsumeIntInRange(0, 5)
    if choice == 0:
        return None
    if choice == 1:
        return data.ConsumeBool()
    if choice in (2, 3):
        return number(data)
    return text(data)


def json_value(data: Provider, depth: int = 3) -> Any:
    """Any value JSON can decode to (and what only Python can: huge integers, NaN, lone surrogates)."""
    choice = data.ConsumeIntInRange(0, 9) if depth > 0 else 0
    if choice <= 5:
        return scalar(data)
    if choice == 6:
        return [json_value(data, depth - 1) for _ in range(data.ConsumeIntInRange(0, 4))]
    if choice == 7:
        return nested(data)
    return {key(data): json_value(data, depth - 1) for _ in range(data.ConsumeIntInRange(0, 4))}


def key(data: Provider) -> str:
    """An object key: a field's name, an image object's key, or any text."""
    if data.ConsumeBool():
        return data.PickValueInList(_KEYS)
    return text(data, 12)


def nested(data: Provider) -> Any:
    """A list or object nested hundreds to thousands of levels deep around a scalar."""
    value = scalar(data)
    as_list = data.ConsumeBool()
    for _ in range(data.ConsumeIntInRange(1, 3000)):
        value = [value] if as_list else {"name": value}
    return value


#: The keys a JSON edit request (and its image and LoRA objects) may have.
KEYS: tuple[str, ...] = tuple(
    sorted(
        {name for field in FIELDS for name in (field.key, *field.names)}
        | {"image_url", "url", "file_id", "name", "scale", "path", "lora_name", "lora_scale", "lora_path", "adapter"}
    )
)
_WORDS, _NUMBERS, _KEYS = list(WORDS), list(NUMBERS), list(KEYS)


def climb_nesting(data: bytes) -> int:
    """A coverage ladder for deep nesting: the longest run of ``[`` or ``{`` in ``data``, in steps.

    Nesting depth is no branch of a parser, so libFuzzer would not keep an input for
    nesting deeper than the ones before it; each step here is a branch of its own,
    so it does, and climbs a rung at a time to the depths where parsers break.
    """
    runs = _OPENINGS.findall(data)
    deepest = max(map(len, runs)) if runs else 0
    if deepest < 16:
        return 0
    if deepest < 64:
        return 1
    if deepest < 128:
        return 2
    if deepest < 192:
        return 3
    if deepest < 256:
        return 4
    if deepest < 288:
        return 5
    if deepest < 320:
        return 6
    if deepest < 512:
        return 7
    return 8


_OPENINGS = re.compile(rb"[\[{]+")
