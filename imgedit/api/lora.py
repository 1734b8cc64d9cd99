"""The ``lora`` field: which LoRA adapters a request runs with, in every spelling clients use.

* ``name``, ``name:scale``, or several: ``a:1,b:0.5`` (multipart and JSON strings);
* in JSON, a list of ``{"name": ..., "scale": ...}`` objects (or of the strings above);
* vLLM-Omni's form: one object, or its JSON text in a form field, whose name is
  ``name``, ``lora_name`` or ``adapter``, whose scale is ``scale`` or ``lora_scale``,
  and which may give a ``path`` (``lora_path``) under ``IMGEDIT_LORA_DIR``.

Only the syntax is checked here (a 400 naming ``lora``); whether the LoRAs
exist is the server's to say.
"""

from __future__ import annotations

import reprlib
from typing import Any

from imgedit.api.json_text import parse_json
from imgedit.edit import LORA_NAME, LoraChoice
from imgedit.errors import RequestError, invalid

PARAM = "lora"
#: Scales beyond this are surely typos (LoRA scales are about 0 to 1.5).
MAX_SCALE = 8.0
#: The most LoRAs one request may combine.
MAX_CHOICES = 8
_NAME_KEYS = ("name", "lora_name", "adapter")
_SCALE_KEYS = ("scale", "lora_scale")
_PATH_KEYS = ("path", "lora_path")


def parse_lora(value: Any) -> tuple[LoraChoice, ...]:
    """The LoRAs ``value`` names (a string, a list, or an object), in order.

    Raises:
        RequestError: 400 naming ``lora`` for anything else.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return (_from_object(parse_json(text, PARAM, "Invalid value for 'lora': the text")),)
        items: list[Any] = [item for item in text.split(",")]
    elif isinstance(value, dict):
        return (_from_object(value),)
    elif isinstance(value, list):
        items = value
    else:
        raise _bad("expected a string, a list or an object")
    choices = tuple(_from_item(item) for item in items)
    if len(choices) > MAX_CHOICES:
        raise _bad(f"at most {MAX_CHOICES} adapters may be combined")
    names = [choice.name for choice in choices if choice.name is not None]
    if len(set(names)) != len(names):
        raise _bad("an adapter is named twice")
    return choices


def _from_item(item: Any) -> LoraChoice:
    if isinstance(item, dict):
        return _from_object(item)
    if not isinstance(item, str):
        raise _bad("each adapter is a 'name[:scale]' string or an object")
    name, colon, scale = item.strip().partition(":")
    return LoraChoice(_name(name.strip()), _scale(scale.strip()) if colon else None)


def _from_object(item: Any) -> LoraChoice:
    if not isinstance(item, dict):
        raise _bad("expected an object with a name")
    name = _first(item, _NAME_KEYS)
    path = _first(item, _PATH_KEYS)
    scale = _first(item, _SCALE_KEYS)
    if name is None and path is None:
        raise _bad(f"an adapter object needs one of {', '.join(_NAME_KEYS + _PATH_KEYS)}")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise _bad("'path' must be a non-empty string")
    return LoraChoice(
        _name(name) if name is not None else None,
        _scale(scale) if scale is not None else None,
        path.strip() if path is not None else None,
    )


def _first(item: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((item[key] for key in keys if item.get(key) is not None), None)


def _name(name: Any) -> str:
    if not isinstance(name, str) or not LORA_NAME.fullmatch(name):
        # reprlib: a name may be any JSON value, a long string or a deep list among them.
        raise _bad(f"{reprlib.repr(name)} is not an adapter name (letters, digits, '.', '_' and '-')")
    return name


def _scale(scale: Any) -> float:
    if isinstance(scale, bool):
        raise _bad("a scale is a number")
    if isinstance(scale, str):
        try:
            scale = float(scale)
        except ValueError:
            raise _bad(f"{scale!r} is not a number") from None
    # One comparison refuses NaN and infinities too, and converts nothing (an integer may exceed a double).
    if not isinstance(scale, int | float) or not abs(scale) <= MAX_SCALE:
        raise _bad(f"a scale is a number from {-MAX_SCALE:g} to {MAX_SCALE:g}")
    return float(scale)


def _bad(reason: str) -> RequestError:
    return invalid(PARAM, f"Invalid value for 'lora': {reason}.")
