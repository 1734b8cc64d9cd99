"""Several models on one worker (``IMGEDIT_MODELS``): which model's handler answers a request, and the handlers
of the models beside the default.

A request goes to the model its ``model`` field names, else to the default (the first).

The field is read from the body before it is parsed, so that the request is
parsed by the handler of the model it is for (each model has its own limits,
defaults and LoRAs). A name no model has goes to the default handler, whose
parser answers with a 400 naming ``model`` and listing every served model.
"""

from __future__ import annotations

from typing import Any

from imgedit.api.multipart import Form
from imgedit.config import Settings
from imgedit.logs import get_logger
from imgedit.lora.admin import LoraAdmin
from imgedit.lora.registry import LoraRegistry
from imgedit.media.fetch import Fetcher
from imgedit.scheduling.engine import Engine
from imgedit.scheduling.jobs import ModelTurn
from imgedit.serving.handler import EditHandler
from imgedit.serving.recipe import PreparedModel
from imgedit.serving.storage import Storage

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
        return self._by_name.get(named, self.default) if isinstance(named, str) else self.default


def other_handler(
    settings: Settings, model: PreparedModel, engine: Engine, fetcher: Fetcher, storage: Storage
) -> EditHandler:
    """Warm up another model of ``IMGEDIT_MODELS`` on the shared engine and build its handler.

    Per-request LoRAs and speed tiers are the default model's.
    """
    loaded, family = model.loaded, model.family
    refusal = "per-request adapters run on the default model, the first of IMGEDIT_MODELS"
    loras = LoraRegistry(loaded.pipeline, max_loras=settings.max_loras, always_on=loaded.always_on, refusal=refusal)
    for plan in family.warmup_plans():
        engine.run_now(plan.calls)
    log.info("also serving %s as %r (family %s)", loaded.model_id, settings.served_name, family.name)
    handler = EditHandler(settings, family, engine, fetcher, LoraAdmin(loras, engine, None), None, storage)
    handler.turn = ModelTurn(prepare=loras.activate, previewer=family.preview, fusable=family.fusable)
    return handler
