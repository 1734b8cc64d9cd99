"""``models``: which served model a request goes to (:meth:`imgedit.serving.routing.ModelRouter.pick`), and the
settings that name the models (:func:`imgedit.serving.catalog.served_settings`).

Input, split at NUL bytes (UTF-8, bytes that are not UTF-8 turned into lone
surrogates): a form's ``model`` part as raw bytes and the same text as a JSON
body's ``model``; then ``IMGEDIT_MODELS``, ``IMGEDIT_LORA_ADAPTERS`` and
``IMGEDIT_PRESETS`` as an operator writes them.

Correct outcomes: ``pick`` returns one of the served models' handlers, never
raises; ``served_settings`` refuses with a :class:`~imgedit.errors.StartupError`
of one line naming its variable, or gives each model its settings: the default
first, names distinct and each a name clients can send, every LoRA of the
variable given to exactly one model.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fuzz.outcome import expect
from imgedit.api.multipart import Form, Part
from imgedit.config import Settings
from imgedit.errors import StartupError
from imgedit.serving.catalog import served_settings
from imgedit.serving.routing import ModelRouter

INSTRUMENT = ("imgedit", "fuzz")
DRIVES = ("imgedit.serving.routing.ModelRouter.pick", "imgedit.serving.catalog.served_settings")
_VARIABLES = ("IMGEDIT_MODELS", "IMGEDIT_LORA_ADAPTERS", "IMGEDIT_PRESETS")


def _handler(name: str, source: str, loras: tuple[str, ...] = ()) -> Any:
    """What pick reads of a handler: its settings and whether its model holds a LoRA."""
    return SimpleNamespace(
        settings=Settings.model_construct(model=source, served_model_name=name),
        loras=SimpleNamespace(has=loras.__contains__),
    )


_HANDLERS = [_handler("first", "tiny:qwen-image-edit-plus"), _handler("klein", "tiny:flux2-klein", ("anime",))]
_ROUTER = ModelRouter(_HANDLERS)


def fuzz_one(data: bytes) -> None:
    chosen, models, loras, presets = (data.split(b"\x00") + [b""] * 4)[:4]
    for body in (Form((Part("model", chosen),)), {"model": chosen.decode("utf-8", "surrogateescape")}):
        picked = _ROUTER.pick(body)
        expect(any(picked is handler for handler in _HANDLERS), "a request goes to a served model", body)
    written = [value.decode("utf-8", "surrogateescape") or None for value in (models, loras, presets)]
    settings = Settings.model_construct(models=written[0], lora_adapters=written[1], presets=written[2])
    try:
        served = served_settings(settings)
    except StartupError as error:
        message = str(error)
        expect("\n" not in message and message.startswith(_VARIABLES), "a refusal is one line naming its variable")
        return
    names = [each.served_name for each in served]
    expect(len(set(names)) == len(names), "every served name is distinct", names)
    expect(all(each.models is None for each in served), "each model is served as if alone", names)
    if written[0] is not None:
        expect(all(0 < len(name) <= 256 and "," not in name for name in names), "names clients can send", names)
        given = [part for part in (written[1] or "").split(",") if part.strip()]
        shared = [part for each in served for part in (each.lora_adapters or "").split(",") if part.strip()]
        expect(len(shared) == len(given), "every LoRA goes to exactly one model", (given, shared))
