"""What counts as a correct answer to fuzz input, and how a crash is named.

A parser given bad input must refuse it the way the server answers a client:
with a :class:`~imgedit.errors.RequestError` (a 400 or 404) or an
:class:`~imgedit.api.errors.ApiError` below 500. Everything else is a crash: any
other exception, a 500, or a :class:`BrokenPromise`, which a target raises when a
result breaks what its function documents (a size that is no multiple, a LoRA
scale out of range...).

A crash's :func:`signature` names its kind (exception type, the innermost frame
and the innermost imgedit frame), so that the runner can tell one bug from the
next and keep fuzzing past the ones it has already seen.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from imgedit.api.errors import ApiError
from imgedit.errors import RequestError

T = TypeVar("T")
#: The one loop every async call of a worker runs on (a new loop per input would dominate the time).
_loop: asyncio.AbstractEventLoop | None = None


class BrokenPromise(Exception):
    """A result that contradicts its function's documentation.

    Args:
        promise: a fixed sentence naming the promise (it is the crash's signature,
            so it must not contain input data).
        detail: what was seen, for the report.
    """

    def __init__(self, promise: str, detail: str = "") -> None:
        super().__init__(f"{promise}: {detail}" if detail else promise)
        self.promise = promise


def expect(condition: bool, promise: str, detail: object = "") -> None:
    """Raise :class:`BrokenPromise` unless ``condition`` holds."""
    if not condition:
        raise BrokenPromise(promise, repr(detail)[:500] if detail != "" else "")


def is_refusal(error: BaseException) -> bool:
    """Whether ``error`` is a correct answer to bad input (a 4xx for the client)."""
    if isinstance(error, ApiError):
        return error.status < 500
    return isinstance(error, RequestError)


def refused(call: Callable[[], T]) -> T | None:
    """``call()``'s result, or None when it refuses its input correctly; any other failure propagates."""
    try:
        return call()
    except (RequestError, ApiError) as error:
        if not is_refusal(error):
            raise
        return None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``coroutine`` run to its end on the worker's persistent event loop."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


def signature(error: BaseException) -> str:
    """The kind of crash ``error`` is, in one line without input data.

    ``RecursionError at json.decoder:raw_decode via imgedit.api.lora:parse_lora``:
    the exception's type, the innermost frame and the innermost frame of imgedit
    (when the innermost is not one; a RecursionError is named by imgedit's frame
    alone). A broken promise is named by the promise.
    """
    if isinstance(error, BrokenPromise):
        return f"BrokenPromise: {error.promise}"
    kind = type(error).__qualname__
    if isinstance(error, ApiError):
        kind += f"({error.status})"
    frames = _frames(error.__traceback__)
    if not frames:
        return kind
    innermost = frames[-1]
    ours = next((frame for frame in reversed(frames) if frame.startswith("imgedit.")), None)
    if isinstance(error, RecursionError) and ours is not None:
        return f"{kind} via {ours}"  # the limit strikes wherever the stack happens to be: only the caller tells
    via = f" via {ours}" if ours is not None and ours != innermost else ""
    return f"{kind} at {innermost}{via}"


def _frames(tb: TracebackType | None) -> list[str]:
    """``module:function`` of each frame of ``tb``, outermost first."""
    names = []
    for frame, _ in traceback.walk_tb(tb):
        module = frame.f_globals.get("__name__", "?")
        names.append(f"{module}:{frame.f_code.co_name}")
    return names
