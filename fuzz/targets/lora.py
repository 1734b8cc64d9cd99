"""``lora``: :func:`imgedit.api.lora.parse_lora` given every spelling of the ``lora`` field.

The input is the field's text (``name``, ``name:scale``, ``a:1,b:0.5``, or
vLLM-Omni's JSON object as text), decoded as UTF-8 with bytes that are not
UTF-8 turned into lone surrogates, unless it starts with a control byte:

* ``\\x01``: the rest is JSON, and the decoded value (a list, an object,
  anything) is what a JSON body's ``lora`` would hold (no JSON: skipped);
* ``\\x02``: the rest makes a value structurally: lists of LoRA objects with
  names, scales and paths of every type, integers past a double, nesting.

Correct outcomes: a RequestError naming ``lora``, or choices that keep their
promises (:func:`fuzz.checks.check_lora`: at most 8, distinct valid names,
finite scales within +-8, and, for text that is all text, paths that are too).
"""

from __future__ import annotations

import json
from typing import Any

import atheris

from fuzz.checks import check_lora, is_text
from fuzz.outcome import refused
from fuzz.values import Provider, climb_nesting, json_value, number, text
from imgedit.api.lora import parse_lora

INSTRUMENT = ("imgedit", "fuzz")
DRIVES = ("imgedit.api.lora.parse_lora",)
_KEYS = ["name", "lora_name", "adapter", "scale", "lora_scale", "path", "lora_path"]


def fuzz_one(data: bytes) -> None:
    climb_nesting(data)
    value: Any
    if data[:1] == b"\x01":
        try:
            value = json.loads(data[1:])
        except (ValueError, RecursionError):
            return
    elif data[:1] == b"\x02":
        value = _structural(atheris.FuzzedDataProvider(data[1:]))
    else:
        value = data.decode("utf-8", "surrogateescape")
    choices = refused(lambda: parse_lora(value))
    if choices is not None:
        # Only text, as a form or a reader hands it over, promises text back (JSON in it may write "\ud800").
        check_lora(choices, texts=isinstance(value, str) and is_text(value))


def _structural(data: Provider) -> Any:
    shape = data.ConsumeIntInRange(0, 3)
    if shape == 0:
        return json_value(data)
    if shape == 1:
        return _lora_object(data)
    return [_lora_object(data) if data.ConsumeBool() else text(data, 16) for _ in range(data.ConsumeIntInRange(0, 10))]


def _lora_object(data: Provider) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for _ in range(data.ConsumeIntInRange(0, 4)):
        key = data.PickValueInList(_KEYS)
        item[key] = number(data) if "scale" in key and data.ConsumeBool() else json_value(data, 1)
    return item
