"""Start-up: check, load the model, pick its adapter, warm it up, build the request handler.

``bentoml serve`` runs :func:`preflight` once in its own process before any
worker starts, and each worker then runs :func:`start`. A worker that fails
there stops the whole server with one line (:func:`start_or_stop_server`).
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from imgedit import metrics
from imgedit.api.routes import ModelCard
from imgedit.config import Settings
from imgedit.errors import one_line
from imgedit.logs import get_logger
from imgedit.media.fetch import Fetcher, FetchPolicy
from imgedit.model.acceleration import OptionError, apply_options
from imgedit.model.families import FamilyAdapter, UnsupportedPipeline, adapter_class_for
from imgedit.model.loader import LoadedModel, ModelLoadError, check_model_source, load_model, pick_device
from imgedit.model.lora import LoraError, parse_named_loras
from imgedit.model.lora_registry import LoraRegistry
from imgedit.model.parallel import Layout, ParallelError, check_layout, check_model, enable_parallelism
from imgedit.model.spec import Defaults
from imgedit.serving.bentoml_seam import arrange_exit_status, stop_server
from imgedit.serving.engine import Engine
from imgedit.serving.handler import EditHandler
from imgedit.serving.lora_admin import LoraAdmin
from imgedit.serving.lora_sync import LoraSync, prepare_directory
from imgedit.serving.ranks import RankGroup, RankStartupError

log = get_logger(__name__)


class StartupError(Exception):
    """Serving cannot start; the message is one line for the operator."""


def preflight(settings: Settings) -> None:
    """Checks run once in the ``bentoml serve`` process before workers start.

    Also arranges for that process to exit with status 1 if a worker later
    fails to start.

    Raises:
        StartupError: the device or the model source is not available.
    """
    try:
        check_model_source(settings)
        check_layout(settings, pick_device(settings.device), _visible_gpus())
    except (ModelLoadError, ParallelError) as error:
        raise StartupError(str(error)) from None
    arrange_exit_status()
    prepare_directory(worker_count(settings))


def worker_count(settings: Settings) -> int:
    """``IMGEDIT_WORKERS``, by default one worker per visible GPU (one on a machine without).

    A model spread over the GPUs with ``IMGEDIT_DEVICE_MAP`` is served by one worker. With
    several ranks per edit, each worker owns that many GPUs: workers = GPUs / ranks.
    """
    if settings.workers is not None:
        return settings.workers
    if settings.device == "cpu" or settings.device_map != "none" or not torch.cuda.is_available():
        return 1
    return max(1, torch.cuda.device_count() // settings.ranks_per_edit)


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def start(settings: Settings, worker: int = 0) -> tuple[EditHandler, ModelCard]:
    """Load and warm up the configured model on worker ``worker``'s device; return its handler and model card.

    With several ranks per edit, the worker starts the others first (see
    :mod:`imgedit.serving.ranks`); each loads the model beside it.

    Raises:
        StartupError: the model cannot be loaded or served as configured.
        Exception: anything unexpected (a failed warm-up, for instance).
    """
    started = time.monotonic()
    try:
        layout = check_layout(settings, pick_device(settings.device), gpus=None)
    except (ModelLoadError, ParallelError) as error:
        raise StartupError(str(error)) from None
    ranks = None
    try:
        if layout.ranks > 1:
            ranks = RankGroup(settings, worker, layout, pick_device(settings.device))
            ranks.start()
        # With several ranks, a worker's devices are its own (claim_gpus): rank 0 has the first.
        slot = worker if ranks is None else 0
        loaded, adapter, options = prepare_model(settings, slot, layout, ranks.loaded if ranks else None)
        if ranks is not None:
            ranks.attach(adapter)
        return _serve(settings, worker, started, loaded, adapter, options, layout, ranks)
    except BaseException as error:
        if ranks is not None:
            ranks.close(kill=True)
        if isinstance(error, RankStartupError):
            raise StartupError(str(error)) from None
        raise


def prepare_model(
    settings: Settings, slot: int, layout: Layout, loaded_everywhere: Callable[[], None] | None = None
) -> tuple[LoadedModel, FamilyAdapter, list[str]]:
    """Load the model on device ``slot``, split it over the ranks, apply the options, build its adapter.

    Every rank of a worker runs this, rank 0 as part of :func:`start`.

    Args:
        loaded_everywhere: called once the model is loaded and checked here,
            before the ranks split it together; it returns once every rank is there.

    Raises:
        StartupError: the model cannot be loaded or served as configured.
    """
    try:
        loaded = load_model(settings, slot)
        adapter_class = adapter_class_for(loaded.pipeline, settings.family)
        check_model(loaded.pipeline, layout)
        if loaded_everywhere is not None:
            loaded_everywhere()
        enable_parallelism(loaded.pipeline, layout, loaded.device)
        options = [*loaded.options, *apply_options(loaded.pipeline, settings, loaded.device)]
    except (ModelLoadError, UnsupportedPipeline, OptionError, ParallelError) as error:
        raise StartupError(str(error)) from None
    if layout.ranks > 1:
        options.append(layout.describe())
    overrides = Defaults(
        steps=settings.default_steps or loaded.default_steps,
        guidance_scale=settings.default_guidance_scale,
        true_cfg_scale=settings.default_true_cfg_scale,
    )
    try:
        adapter = adapter_class(
            loaded.pipeline, overrides=overrides, max_images=settings.max_images, native_pixels=loaded.native_pixels
        )
    except ValueError as error:  # the only setting an adapter can refuse
        raise StartupError(f"IMGEDIT_MAX_IMAGES: {error}") from None
    return loaded, adapter, options


def _serve(
    settings: Settings,
    worker: int,
    started: float,
    loaded: LoadedModel,
    adapter: FamilyAdapter,
    options: list[str],
    layout: Layout,
    ranks: RankGroup | None,
) -> tuple[EditHandler, ModelCard]:
    """Warm up the prepared model and build the handler serving it."""
    # Per-request adapters switch on this process's model alone, so they need one rank per edit.
    refusal = "per-request adapters need one rank per edit (IMGEDIT_*_DEGREE=1)" if layout.ranks > 1 else None
    loras = LoraRegistry(loaded.pipeline, max_loras=settings.max_loras, always_on=loaded.always_on, refusal=refusal)
    engine = Engine(
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        progress_interval=settings.progress_log_seconds,
        previewer=adapter.preview,
        fusable=adapter.fusable,
        prepare=loras.activate,
        runner=ranks,
    )
    admin = _lora_admin(settings, loras, engine, worker)
    try:
        for plan in adapter.warmup_plans():
            engine.run_now(plan.calls)
    except Exception as error:
        if settings.family is None:
            raise
        # A forced family that does not fit the pipeline fails here, on its first call.
        raise StartupError(
            f"IMGEDIT_FAMILY: {settings.family!r} cannot run {type(loaded.pipeline).__name__}: {one_line(error)}"
        ) from None
    log.info(
        "serving %s as %r (%s, family %s, %s on %s%s) after %.1f s",
        loaded.model_id,
        settings.served_name,
        type(loaded.pipeline).__name__,
        adapter.name,
        str(loaded.dtype).removeprefix("torch."),
        loaded.device,
        "".join(f", {option}" for option in options),
        time.monotonic() - started,
    )
    fetcher = Fetcher(
        FetchPolicy(
            enabled=settings.url_fetch,
            allow_private=settings.url_allow_private,
            timeout=settings.url_timeout,
            max_bytes=settings.url_max_bytes,
            max_redirects=settings.url_max_redirects,
            allowed_hosts=settings.allowed_hosts,
        )
    )
    metrics.model_info.labels(
        model=loaded.model_id,
        served_name=settings.served_name,
        family=adapter.name,
        pipeline=type(loaded.pipeline).__name__,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        options=",".join(options) or "none",
    ).set(1)
    for component, size in loaded.parameter_bytes.items():
        metrics.model_parameter_bytes.labels(component=component).set(size)
    metrics.parallel_degree.set(layout.ranks)
    card = ModelCard(id=settings.served_name, created=int(time.time()))
    return EditHandler(settings, loaded.model_id, adapter, engine, fetcher, admin), card


def _lora_admin(settings: Settings, loras: LoraRegistry, engine: Engine, worker: int) -> LoraAdmin:
    """Load ``IMGEDIT_LORA_ADAPTERS`` (on the engine thread, like every change to the model), then follow the
    commands every worker shares, replaying those given before this worker started.

    Raises:
        StartupError: an adapter does not load.
    """
    for name, spec in parse_named_loras(settings.lora_adapters or ""):
        try:
            engine.between_runs(lambda name=name, spec=spec: loras.load(name, spec)).result()
        except LoraError as error:
            raise StartupError(f"IMGEDIT_LORA_ADAPTERS: {error}") from None
    admin = LoraAdmin(loras, engine, settings.lora_dir)
    admin.sync = LoraSync.from_environment(admin.apply, worker)
    admin.sync.start()
    return admin


def drain_on_signals(engine: Engine, grace: float) -> None:
    """On SIGTERM or SIGINT, stop admitting and give running edits ``grace`` seconds, then stop them.

    The server's own handler still runs afterwards: it stops accepting
    connections and waits for the requests in progress.
    """

    def chain(signum: int) -> None:
        previous = signal.getsignal(signum)

        def on_signal(number: int, frame: Any) -> None:
            if not engine.draining:
                engine.drain(grace)
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, on_signal)

    for signum in (signal.SIGTERM, signal.SIGINT):
        chain(signum)


def start_or_stop_server(settings: Settings, worker: int = 0) -> tuple[EditHandler, ModelCard]:
    """:func:`start`, or stop the whole server with a one-line message when it fails."""
    try:
        return start(settings, worker)
    except StartupError as error:
        stop_server(f"imgedit: {error}")
    except Exception as error:
        traceback.print_exc()
        stop_server(f"imgedit: start-up failed: {type(error).__name__}: {one_line(error)}")
