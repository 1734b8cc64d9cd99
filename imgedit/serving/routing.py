"""Several models on one worker (``IMGEDIT_MODELS``): which model's handler answers a request, and the handlers
of the models beside the default.

A request goes to the model its ``model`` field names (or the model of the adapter it names), else to the
default (the first).

The field is read from the body before it is parsed, so that the request is
parsed by the handler of the model it is for (each model has its own limits,
defaults and LoRAs). A name no model has goes to the default handler, whose
parser answers with a 400 naming ``model`` and listing every served model.
"""

from __future__ import annotations

import functools
from typing import Any

from imgedit.api.multipart import Form
from imgedit.config import Settings
from imgedit.logs import get_logger
from imgedit.lora.admin import LoraAdmin
from imgedit.lora.registry import LoraRegistry
from imgedit.media.fetch import Fetcher
from imgedit.scheduling.engine import Engine
from imgedit.scheduling.jobs import ModelTurn
from imgedit.serving.catalog import load_named_loras, model_turn
from imgedit.serving.handler import EditHandler
from imgedit.serving.presets import serving_presets, warm_up_tiers
from imgedit.serving.recipe import PreparedModel
from imgedit.serving.storage import Storage
from imgedit.weights.residency import Residency

log = get_logger(__name__)


class ModelRouter:
    """The handlers of a worker's models.

    Args:
        handlers: one per served model, the default first.
    """

    def __init__(self, handlers: list[EditHandler]) -> None:
        self.handlers = handlers
        self.default = handlers[0]
        self._by_name: dict[str, EditHandler] = {}
        for handler in handlers:
            for name in dict.fromkeys((handler.settings.served_name, handler.settings.model)):
                self._by_name.setdefault(name, handler)

    def pick(self, body: Form | dict[str, Any]) -> EditHandler:
        """The handler of the model ``body`` names (its first ``model`` field), or the default."""
        if isinstance(body, Form):
            parts = body.named("model")
            try:
                named: object = parts[0].data.decode("utf-8").strip() if parts else None
            except UnicodeDecodeError:
                return self.default
        else:
            named = body.get("model")
        if not isinstance(named, str):
            return self.default
        # A served name, else an adapter's name (each adapter belongs to one model).
        found = self._by_name.get(named)
        return found or next((each for each in self.handlers if each.loras.has(named)), self.default)


def other_handler(
    settings: Settings,
    model: PreparedModel,
    engine: Engine,
    fetcher: Fetcher,
    storage: Storage,
    residency: Residency | None = None,
) -> EditHandler:
    """Warm up another model of ``IMGEDIT_MODELS`` on the shared engine, load its adapters, and build its handler.

    Its adapters are those of ``IMGEDIT_LORA_ADAPTERS`` written ``MODEL/NAME=SOURCE`` for it, and its speed tiers
    the file ``IMGEDIT_PRESETS`` gives it as ``MODEL=FILE``; the load endpoint and ``IMGEDIT_LORA_DIR`` paths are
    the default model's.

    Raises:
        StartupError: one of its adapters does not load, or its speed tiers do not check or run.
    """
    loaded, family = model.loaded, model.family
    loras = LoraRegistry(loaded.pipeline, max_loras=settings.max_loras, always_on=loaded.always_on)
    turn = model_turn(settings.served_name, model, loras, residency)
    prepare_now(engine, turn)
    for plan in family.warmup_plans():
        engine.run_now(plan.calls)
    load_named_loras(settings, loras, engine, named=settings.served_name)
    presets = serving_presets(settings, family)
    warm_up_tiers(engine.run_now, family, presets)
    log.info("also serving %s as %r (family %s)", loaded.model_id, settings.served_name, family.name)
    no_paths = "LoRA paths load on the first model of IMGEDIT_MODELS only; this one takes its IMGEDIT_LORA_ADAPTERS"
    lora_admin = LoraAdmin(loras, engine, None, no_paths=no_paths)
    handler = EditHandler(settings, family, engine, fetcher, lora_admin, presets, storage)
    handler.turn = turn
    return handler


def prepare_now(engine: Engine, turn: ModelTurn) -> None:
    """Make ``turn``'s model ready (on the device, no adapter on) before the next run; for its warm-ups."""
    if turn.prepare is not None:
        engine.between_runs(functools.partial(turn.prepare, ())).result()
