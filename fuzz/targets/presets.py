"""``presets``: :func:`imgedit.serving.presets.parse_presets` given the bytes of an ``IMGEDIT_PRESETS`` file.

The file is the operator's, not a client's, but a server must still refuse a
bad one with one line rather than a traceback. Input: the file's bytes, YAML or
JSON (anchors, aliases, tags, deep nesting and non-UTF-8 bytes included).

Correct outcomes: a :class:`~imgedit.serving.presets.PresetError` of one line,
or presets that keep their promises: only the five levels, request values
within the bounds of the request field of the same name, levers within those
of the setting, LoRAs by name only.
"""

from __future__ import annotations

import math

from fuzz.checks import check_lora
from fuzz.outcome import expect
from imgedit.api.fields import FIELDS_BY_NAME
from imgedit.serving.presets import LEVELS, LEVER_KEYS, REQUEST_KEYS, PresetError, parse_presets

#: YAML's own parser is left uninstrumented: with it, 3,000 inputs took 24 s instead of 3.5 s. The
#: dictionary carries YAML's tags, anchors and scalars instead.
INSTRUMENT = ("imgedit", "fuzz")
DRIVES = ("imgedit.serving.presets.parse_presets",)


def fuzz_one(data: bytes) -> None:
    try:
        presets = parse_presets(data)
    except PresetError as error:
        expect("\n" not in str(error) and len(str(error)) < 2000, "a refusal is one short line", str(error)[:200])
        return
    expect(set(presets.recipes) <= set(LEVELS), "only the five levels", list(presets.recipes))
    for recipe in presets.recipes.values():
        expect(set(recipe.options) <= set(REQUEST_KEYS), "request fields only", recipe)
        expect(set(recipe.levers) <= set(LEVER_KEYS), "levers only", recipe)
        for key, value in recipe.options.items():
            field = FIELDS_BY_NAME[key]
            if field.low is not None and field.high is not None:
                expect(
                    not isinstance(value, bool) and math.isfinite(value) and field.low <= value <= field.high,
                    "request values within the field's bounds",
                    (key, value),
                )
            elif field.kind == "choice":
                expect(value in field.choices, "choices among the field's", (key, value))
        cfg_until = recipe.levers.get("cfg_until", 1.0)
        expect(0 < cfg_until <= 1, "cfg_until within (0, 1]", cfg_until)
        expect(all(choice.path is None and choice.name for choice in recipe.loras), "LoRAs by name only", recipe)
        check_lora(recipe.loras, texts=False)
