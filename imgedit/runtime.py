"""Start-up: load the model, pick its adapter, warm it up, build the request handler."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from imgedit.config import Settings
from imgedit.engine import Engine
from imgedit.families import adapter_class_for
from imgedit.fetch import Fetcher, FetchPolicy
from imgedit.handler import EditHandler
from imgedit.loader import load_model
from imgedit.logs import get_logger
from imgedit.v1_routes import ModelCard

log = get_logger(__name__)


def start(settings: Settings) -> tuple[EditHandler, ModelCard]:
    """Load and warm up the configured model; return its handler and model card.

    Raises:
        ModelLoadError: the model cannot be loaded.
        UnsupportedPipeline: no adapter serves the pipeline's class.
    """
    started = time.monotonic()
    loaded = load_model(settings)
    adapter_class = adapter_class_for(loaded.pipeline)
    adapter = adapter_class(
        loaded.pipeline,
        default_steps=settings.default_steps or loaded.default_steps,
        max_images=settings.max_images,
    )
    engine = Engine(loaded.pipeline)
    engine.run_now(adapter.warmup_calls())
    log.info(
        "serving %s as %r (%s, %s on %s) after %.1f s",
        loaded.model_id,
        settings.served_name,
        type(loaded.pipeline).__name__,
        str(loaded.dtype).removeprefix("torch."),
        loaded.device,
        time.monotonic() - started,
    )
    fetcher = Fetcher(
        FetchPolicy(
            enabled=settings.url_fetch,
            allow_private=settings.url_allow_private,
            timeout=settings.url_timeout,
            max_bytes=settings.url_max_bytes,
            max_redirects=settings.url_max_redirects,
        )
    )
    card = ModelCard(id=settings.served_name, created=int(time.time()))
    return EditHandler(settings, loaded.model_id, adapter, engine, fetcher), card


def stop_server(message: str) -> NoReturn:
    """Print ``message`` and stop the whole ``bentoml serve`` process, not just this worker.

    A worker that fails in start-up is restarted forever by BentoML's process
    manager, so the worker asks its parent to shut down, then exits.
    """
    print(message, file=sys.stderr, flush=True)
    parent = os.getppid()
    try:
        parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        parent_command = b""
    if b"bentoml" in parent_command:
        os.kill(parent, signal.SIGTERM)
    os._exit(1)
