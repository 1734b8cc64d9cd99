"""Reading JSON that a client wrote: the body of a JSON request, and JSON text inside a field.

Whatever the client's bytes hold ends here as a value the layers below can
trust, or as a :class:`~imgedit.errors.RequestError` naming the field:

* malformed JSON, ``NaN`` or ``Infinity``, a number with thousands of digits
  and nesting past :data:`MAX_DEPTH` are refused while parsing;
* every string (keys too) is valid Unicode: JSON's ``\\ud800`` escapes can
  write a lone UTF-16 surrogate, which no encoder, tokenizer or log line can
  take, so it is refused here rather than failing deep in the model;
* every integer fits a double, as RFC 8259 advises for interoperable JSON, so
  arithmetic and messages on it cannot overflow.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from imgedit.errors import RequestError, invalid

#: The deepest nesting accepted; no field of the API nests more than four levels.
MAX_DEPTH = 64
#: Integers beyond this are not doubles (``float(2**1024)`` overflows).
_LARGEST_INTEGER = 2**1024
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(text: bytes | bytearray | str, param: str | None, what: str) -> Any:
    """The value ``text`` writes, checked as the module says.

    Args:
        text: the JSON text (bytes are decoded as JSON's UTF-8, -16 or -32).
        param: the field the text came from, or None for a whole body; the
            checks on the parsed value name its top-level key where there is one.
        what: how errors name the text: ``"The request body"``, ``"Field 'lora'"``.

    Raises:
        RequestError: ``invalid_json`` for text that is not JSON (or nests too
            deep); ``invalid_value`` naming the field for a lone surrogate or an
            integer beyond a double.
    """
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, a 5,000-digit number, deep nesting
        raise invalid(param, f"{what} is not valid JSON: {_reason(error)}.", code="invalid_json") from None
    if param is None and isinstance(value, dict):
        # A body's fields: each is checked under its own name.
        for key, item in value.items():
            if _SURROGATE.search(key):
                raise _surrogate(None)
            check_value(item, key)
    else:
        check_value(value, param)
    return value


def check_value(value: Any, param: str | None) -> None:
    """Refuse a decoded JSON ``value`` that nests too deep, holds a lone surrogate or an integer beyond a double.

    Raises:
        RequestError: naming ``param``.
    """
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise invalid(param, f"{_named(param)} nests deeper than {MAX_DEPTH} levels.", code="invalid_json")
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _surrogate(param)
        elif isinstance(item, bool | float) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) >= _LARGEST_INTEGER:
                raise invalid(param, f"{_named(param)} holds an integer too large for a JSON number.")
        elif isinstance(item, dict):
            for key, member in item.items():
                if _SURROGATE.search(key):
                    raise _surrogate(param)
                pending.append((member, depth + 1))
        elif isinstance(item, list):
            pending.extend((member, depth + 1) for member in item)


def _named(param: str | None) -> str:
    return f"Field '{param}'" if param is not None else "The request body"


def _surrogate(param: str | None) -> RequestError:
    return invalid(
        param,
        f"{_named(param)} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not text.",
        code="invalid_text",
    )


def _no_constant(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON value")


def _reason(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "it nests too deeply"
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    return str(error).split("\n")[0][:200]
