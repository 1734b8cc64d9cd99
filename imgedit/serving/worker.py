"""One BentoML worker: what it serves and everything it owns, built once at start-up.

``service.py`` holds a :class:`Worker` and talks to nothing else while it
serves: the edit route, the model list, the LoRA endpoints, readiness,
draining on SIGTERM and shutdown all go through it. Start-up
(:mod:`imgedit.serving.startup`) builds it.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imgedit import metrics
from imgedit.api.errors import ApiError, http_error, shutting_down
from imgedit.api.routes import ModelCard
from imgedit.errors import RequestError
from imgedit.lora.admin import LoraAdmin, PartlyApplied
from imgedit.lora.sync import ShuttingDown
from imgedit.scheduling.engine import Engine
from imgedit.serving.background import Background
from imgedit.serving.front import Front
from imgedit.serving.handler import EditHandler
from imgedit.serving.recipe import PreparedModel
from imgedit.weights.residency import Residency


class Worker:
    """A worker serving one model: its engine, its LoRAs, its request handler and its model card.

    Args:
        served_name: the name clients see (``IMGEDIT_SERVED_MODEL_NAME`` or the model's last segment).
        model: the prepared model.
        engine: runs the model's calls, one at a time.
        handler: serves ``POST /v1/images/edits``.
        background: runs background jobs and keeps answers for retries; None answers every edit on its connection.
        ranks: the processes that run each edit together.
        others: the other served models (``IMGEDIT_MODELS``), each prepared and with its handler, which share
            the engine; the first model is the default.
        residency: which of the models are on the device (None: with one model, it always is).
    """

    def __init__(
        self,
        *,
        served_name: str,
        model: PreparedModel,
        engine: Engine,
        handler: EditHandler,
        background: Background | None = None,
        ranks: int = 1,
        others: Sequence[tuple[PreparedModel, EditHandler]] = (),
        residency: Residency | None = None,
    ) -> None:
        self.model = model
        self.engine = engine
        self.handler = handler
        self.background = background
        self.front = Front(background.router, background) if background is not None else None
        self.lora_admin: LoraAdmin = handler.lora_admin
        self.residency = residency
        self.created = int(time.time())
        self.served = [handler, *(other for _, other in others)]
        _export_model_metrics([(served_name, model), *((other.settings.served_name, each) for each, other in others)])
        metrics.parallel_degree.set(ranks)

    @property
    def ready(self) -> bool:
        """Whether the worker takes new edits (not while it drains for shutdown)."""
        return not self.engine.draining

    async def edit(self, connection: Request) -> Response:
        """``POST /v1/images/edits``: never raises; every failure is an OpenAI-shaped error response."""
        if self.front is not None:
            return await self.front.edit(connection)
        return await self.handler.handle(connection)

    def jobs(self) -> Background:
        """What answers for background jobs and stored images (the ``/v1/images/edits/{id}`` routes).

        Raises:
            ApiError: 404 on a worker that keeps no jobs.
        """
        if self.background is None:
            raise ApiError(404, "This server runs no background jobs.", code="not_found")
        return self.background

    def models(self) -> list[ModelCard]:
        """``GET /v1/models``: the served models, each saying whether it is on the device now, then every LoRA as a
        model of its own on top of the model it belongs to."""
        names = [handler.settings.served_name for handler in self.served]
        on_device = set(names if self.residency is None else self.residency.resident())
        cards = [ModelCard(id=name, created=self.created, on_device=name in on_device) for name in names]
        for name, handler in zip(names, self.served, strict=True):
            cards += [
                ModelCard(id=entry.name, created=entry.created, root=name, parent=name)
                for entry in handler.loras.registered()
            ]
        return cards

    async def load_lora(self, name: Any, path: Any, scale: Any = 1.0) -> dict[str, Any]:
        """``POST /v1/load_lora_adapter`` on every worker.

        Raises:
            ApiError: 400 for a bad request, 500 or 504 when only some workers loaded it, 503 while the server
                shuts down.
        """
        with _answered_as_api_errors():
            return await self.lora_admin.load(name, path, scale)

    async def unload_lora(self, name: Any) -> dict[str, Any]:
        """``POST /v1/unload_lora_adapter`` on every worker.

        Raises:
            ApiError: 404 when no such LoRA is loaded, 500 or 504 when only some workers unloaded it, 503 while
                the server shuts down.
        """
        with _answered_as_api_errors():
            return await self.lora_admin.unload(name)

    def drain(self, grace: float) -> None:
        """Admit no new edit or LoRA command; give running edits ``grace`` seconds, then stop them.

        A LoRA command in progress stops waiting for the other workers (they
        are stopping too) and is answered 503 at once, so it never holds the
        shutdown.
        """
        if not self.engine.draining:
            self.engine.drain(grace)
        self.lora_admin.sync.stop_waiting()

    def drain_on_signals(self, grace: float) -> None:
        """On SIGTERM or SIGINT, :meth:`drain` with ``grace``.

        The server's own handler still runs afterwards: it stops accepting
        connections and waits for the requests in progress.
        """

        def chain(signum: int) -> None:
            previous = signal.getsignal(signum)

            def on_signal(number: int, frame: FrameType | None) -> None:
                self.drain(grace)
                if callable(previous):
                    previous(number, frame)

            signal.signal(signum, on_signal)

        for signum in (signal.SIGTERM, signal.SIGINT):
            chain(signum)

    def close(self) -> None:
        """Stop following the LoRA commands, then run what is queued and stop the engine (and its ranks), then stop
        looking after the background jobs."""
        self.lora_admin.sync.close()
        self.engine.close()
        if self.background is not None:
            self.background.close()


@contextlib.contextmanager
def _answered_as_api_errors() -> Iterator[None]:
    """What the LoRA endpoints tell the client when a command is refused or only some workers applied it."""
    try:
        yield
    except RequestError as error:
        raise http_error(error) from None
    except ShuttingDown:
        raise shutting_down(
            "The server is shutting down and takes no new LoRA commands; a command already sent may have reached "
            "only some workers. Retry once it is back."
        ) from None
    except PartlyApplied as error:
        raise ApiError(504 if error.timed_out else 500, str(error), code="lora_partly_applied") from None


def _export_model_metrics(models: list[tuple[str, PreparedModel]]) -> None:
    """Each served model's info, and the parameter bytes of every component, summed over the models."""
    sizes: dict[str, int] = {}
    for served_name, model in models:
        loaded = model.loaded
        metrics.model_info.labels(
            model=loaded.model_id,
            served_name=served_name,
            family=model.family.name,
            pipeline=type(loaded.pipeline).__name__,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            options=",".join(model.options) or "none",
        ).set(1)
        for component, size in loaded.parameter_bytes.items():
            sizes[component] = sizes.get(component, 0) + size
    for component, size in sizes.items():
        metrics.model_parameter_bytes.labels(component=component).set(size)
