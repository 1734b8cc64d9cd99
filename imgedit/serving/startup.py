"""Start-up: check the settings, load the model, warm it up, and build the :class:`~imgedit.serving.worker.Worker`.

``bentoml serve`` runs :func:`preflight` once in its own process before any
worker starts, and each worker then runs :func:`start_worker`. A worker that
fails there stops the whole server with one line (:func:`start_or_stop_server`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from imgedit import metrics
from imgedit.config import Settings
from imgedit.errors import StartupError, one_line
from imgedit.logs import get_logger
from imgedit.lora.admin import LoraAdmin
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import LoraError, parse_loras, parse_named_loras
from imgedit.lora.sync import LoraSync, prepare_directory
from imgedit.media.fetch import Fetcher
from imgedit.model import events
from imgedit.model.acceleration import OptionError, check_options
from imgedit.model.devices import DeviceError, pick_device, visible_gpus
from imgedit.model.families import family_names
from imgedit.ranks.group import RankGroup, RankSetup, RankStartupError, claim_gpus
from imgedit.ranks.plans import ParallelError, RankLayout, check_layout
from imgedit.scheduling.capacity import replica_concurrency
from imgedit.scheduling.engine import Engine
from imgedit.serving.background import Background
from imgedit.serving.bentoml_seam import arrange_exit_status, stop_server
from imgedit.serving.catalog import check_several, load_named_loras, load_others, model_turn, served_settings
from imgedit.serving.handler import EditHandler
from imgedit.serving.options import acceleration_options, fetch_policy, load_options, rank_layout
from imgedit.serving.presets import PresetError, load_presets, serving_presets, warm_up_tiers
from imgedit.serving.recipe import ModelRecipe, PreparedModel, prepare_family, prepare_model
from imgedit.serving.routing import ModelRouter, other_handler, prepare_now
from imgedit.serving.storage import check_storage, open_storage
from imgedit.serving.worker import Worker
from imgedit.weights.loader import check_placement, check_source
from imgedit.weights.residency import Residency
from imgedit.weights.sources import BENTOML_PREFIX, ModelLoadError

log = get_logger(__name__)


def preflight(settings: Settings) -> None:
    """What runs once in the ``bentoml serve`` process before workers start: :func:`check_settings`, then
    arrange for that process to exit with status 1 if a worker later fails to start.

    Raises:
        StartupError: the device, the model source or a combination of settings is not available.
    """
    check_settings(settings)
    check_storage(settings)
    arrange_exit_status()
    prepare_directory(worker_count(settings))


def check_settings(settings: Settings) -> None:
    """Everything that can be checked before a model loads: the device, the model source, the combinations.

    Raises:
        StartupError: naming the variable at fault.
    """
    served = served_settings(settings)
    settings = served[0]
    check_several(settings, len(served))
    try:
        device = pick_device(settings.device)
        check_options(acceleration_options(settings), device)
        for other in served[1:]:
            try:
                check_source(load_options(other), device)
            except ModelLoadError as error:
                raise StartupError(f"IMGEDIT_MODELS: {other.served_name}: {error}") from None
            _check_loras(other)
            if other.presets is not None:
                load_presets(other.presets)
        load = load_options(settings)
        check_placement(load, device)
        if settings.device_map != "none" and (settings.workers or 1) > 1:
            raise StartupError(
                "IMGEDIT_WORKERS: a model spread over the GPUs (IMGEDIT_DEVICE_MAP) is served by one worker"
            )
        if settings.family is not None and settings.family not in family_names():
            raise StartupError(
                f"IMGEDIT_FAMILY: unknown family {settings.family!r}; known: {', '.join(family_names())}"
            )
        _check_loras(settings)
        if settings.presets is not None:
            load_presets(settings.presets)
        check_source(load, device)
        check_ranks(settings, device, visible_gpus())
    except (DeviceError, OptionError, ModelLoadError, ParallelError) as error:
        raise StartupError(str(error)) from None
    except PresetError as error:
        raise StartupError(f"IMGEDIT_PRESETS: {error}") from None


def check_ranks(settings: Settings, device: torch.device, gpus: int | None) -> RankLayout:
    """The layout of ranks the settings ask for, checked against the device and the other settings.

    Args:
        gpus: CUDA devices visible to the server; None in a worker, which sees only its own.

    Raises:
        ParallelError: naming the variable.
    """
    layout = rank_layout(settings)
    check_layout(
        layout,
        device,
        gpus,
        workers=settings.workers,
        device_map=settings.device_map,
        offload=settings.offload,
        acceleration=acceleration_options(settings),
        fixed_loras=bool(settings.lora),
    )
    return layout


def claim_devices(settings: Settings, index: int) -> None:
    """In worker ``index``, before anything starts CUDA: with several ranks per edit, see only its own GPUs."""
    claim_gpus(settings.ranks_per_edit, settings.device, index)


def store_models(settings: Settings) -> list[str]:
    """The tags of the BentoML store models ``IMGEDIT_MODEL`` or ``IMGEDIT_MODELS`` names (``bentoml:TAG``), which
    a Bento carries.

    Raises:
        StartupError: ``IMGEDIT_MODELS`` does not parse.
    """
    sources = [served.model for served in served_settings(settings)]
    return [source.removeprefix(BENTOML_PREFIX) for source in sources if source.startswith(BENTOML_PREFIX)]


def traffic(settings: Settings, workers: int, grace: float) -> dict[str, Any]:
    """BentoML's ``traffic`` of the service: its timeout (``grace`` seconds past our own), and for BentoCloud the
    requests a replica works on at once, the rest held in BentoCloud's queue."""
    return {
        "timeout": settings.request_timeout + grace,
        "concurrency": replica_concurrency(workers, settings.max_queue, settings.max_batch),
        "external_queue": True,
    }


def worker_count(settings: Settings) -> int:
    """``IMGEDIT_WORKERS``, by default one worker per visible GPU (one on a machine without).

    A model spread over the GPUs with ``IMGEDIT_DEVICE_MAP`` is served by one worker. With
    several ranks per edit, each worker owns that many GPUs: workers = GPUs / ranks.
    """
    if settings.workers is not None:
        return settings.workers
    if settings.device == "cpu" or settings.device_map != "none":
        return 1
    return max(1, visible_gpus() // settings.ranks_per_edit)


def start_worker(settings: Settings, index: int = 0) -> Worker:
    """Load and warm up the configured model on worker ``index``'s device; return the worker serving it.

    With several ranks per edit, the worker starts the others first (see
    :mod:`imgedit.ranks.group`); each loads the model beside it.

    Raises:
        StartupError: the model cannot be loaded or served as configured.
        Exception: anything unexpected (a failed warm-up, for instance).
    """
    started = time.monotonic()
    served = served_settings(settings)
    settings = served[0]  # the default model's
    try:
        device = pick_device(settings.device)
        layout = check_ranks(settings, device, gpus=None)
    except (DeviceError, ParallelError) as error:
        raise StartupError(str(error)) from None
    recipe = ModelRecipe.from_settings(settings)
    ranks = None
    try:
        if layout.ranks > 1:
            ranks = RankGroup(rank_setup(settings, recipe, layout), index, device, on_fatal=_stop_server)
            ranks.start()
        # With several ranks, a worker's devices are its own (claim_gpus): rank 0 has the first.
        slot = index if ranks is None else 0
        model = prepare_model(recipe, slot, ranks.loaded if ranks else None)
        if ranks is not None:
            ranks.attach(model.family)
        others, residency = load_others(served, model, slot) if len(served) > 1 else ([], None)
        paired = list(zip(served[1:], others, strict=True))
        return _serve(settings, index, started, model, layout, ranks, paired, residency)
    except BaseException as error:
        if ranks is not None:
            ranks.close(kill=True)
        if isinstance(error, RankStartupError):
            raise StartupError(str(error)) from None
        raise


def rank_setup(settings: Settings, recipe: ModelRecipe, layout: RankLayout) -> RankSetup:
    """What the extra ranks of a worker start with: they prepare the model from the same ``recipe``."""
    return RankSetup(
        layout=layout,
        device=settings.device,
        timeout=settings.rank_timeout,
        log_level=settings.log_level,
        prepare=functools.partial(prepare_family, recipe),
    )


def _serve(
    settings: Settings,
    index: int,
    started: float,
    model: PreparedModel,
    layout: RankLayout,
    ranks: RankGroup | None,
    others: list[tuple[Settings, PreparedModel]],
    residency: Residency | None,
) -> Worker:
    """Warm up the prepared models and build the worker serving them (the default model, then ``others``, all on
    the device or swapped in by ``residency``)."""
    loaded, family = model.loaded, model.family
    # Per-request LoRAs switch on this process's model alone, so they need one rank per edit.
    refusal = None
    if layout.ranks > 1:
        refusal = "per-request adapters need one rank per edit (IMGEDIT_*_DEGREE=1, no IMGEDIT_CFG_PARALLEL)"
    loras = LoraRegistry(loaded.pipeline, max_loras=settings.max_loras, always_on=loaded.always_on, refusal=refusal)
    engine = Engine(
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        progress_interval=settings.progress_log_seconds,
        fusable=family.fusable or bool(others),  # with several models, each job's model says
        runner=ranks,
    )
    # Every edit carries its model's turn (its LoRA switch and previewer): the engine needs no hooks of its own.
    turn = model_turn(settings.served_name, model, loras, residency)
    prepare_now(engine, turn)  # on the device, for the warm-ups
    presets = serving_presets(
        settings, family, layout.ranks, layout.context
    )  # before the LoRA commands: it switches the step cache here
    lora_admin = _lora_admin(settings, loras, engine, index)
    try:
        for plan in family.warmup_plans():
            engine.run_now(plan.calls)
    except Exception as error:
        if settings.family is None:
            raise
        # A forced family that does not fit the pipeline fails here, on its first call.
        raise StartupError(
            f"IMGEDIT_FAMILY: {settings.family!r} cannot run {type(loaded.pipeline).__name__}: {one_line(error)}"
        ) from None
    warm_up_tiers(engine.run_now, family, presets)
    # From here on, what the edits do (not the warm-up).
    events.denoiser_call.observe(metrics.denoiser_calls.inc)
    events.encoding_lookup.observe(
        lambda found: (metrics.encoding_cache_hits if found else metrics.encoding_cache_misses).inc()
    )
    log.info(
        "serving %s as %r (%s, family %s, %s on %s%s) after %.1f s",
        loaded.model_id,
        settings.served_name,
        type(loaded.pipeline).__name__,
        family.name,
        str(loaded.dtype).removeprefix("torch."),
        loaded.device,
        "".join(f", {option}" for option in model.options),
        time.monotonic() - started,
    )
    fetcher = Fetcher(fetch_policy(settings))
    storage = open_storage(settings, fetcher)
    handler = EditHandler(settings, family, engine, fetcher, lora_admin, presets, storage)
    handler.turn = turn
    served = [(model, handler)] + [
        (other, other_handler(each, other, engine, fetcher, storage, residency)) for each, other in others
    ]
    storage.jobs.models = tuple(each.settings.served_name for _, each in served)
    names = tuple(name for _, each in served for name in each.limits.model_names)
    for _, each in served:  # a model's parser lists every served model when a request names none of them
        each.limits = dataclasses.replace(each.limits, model_names=names)
    # A LoRA loaded while serving (on the first model) may not take a name a request's model already means.
    loras.reserved = frozenset(names) | {name for _, each in served[1:] for name in each.loras.names()}
    background = Background(ModelRouter([each for _, each in served]), storage)
    background.start()
    return Worker(
        served_name=settings.served_name,
        model=model,
        engine=engine,
        handler=handler,
        background=background,
        ranks=layout.ranks,
        others=served[1:],
        residency=residency,
    )


def _check_loras(settings: Settings) -> None:
    """``IMGEDIT_LORA`` parses, and ``IMGEDIT_LORA_ADAPTERS``, ``IMGEDIT_LORA_DIR`` and ``IMGEDIT_MAX_LORAS`` agree.

    Raises:
        StartupError: naming the variable.
    """
    if settings.lora:
        try:
            parse_loras(settings.lora)
        except LoraError as error:
            raise StartupError(f"IMGEDIT_LORA: {error}") from None
    named = []
    if settings.lora_adapters:
        try:
            named = parse_named_loras(settings.lora_adapters)
        except LoraError as error:
            raise StartupError(f"IMGEDIT_LORA_ADAPTERS: {error}") from None
    if len(named) > settings.max_loras:
        raise StartupError(
            f"IMGEDIT_MAX_LORAS: {settings.max_loras} is fewer than the {len(named)} adapters of IMGEDIT_LORA_ADAPTERS"
        )
    if settings.lora_dir and not Path(settings.lora_dir).expanduser().is_dir():
        raise StartupError(f"IMGEDIT_LORA_DIR: {settings.lora_dir!r} is not a directory")


def _lora_admin(settings: Settings, loras: LoraRegistry, engine: Engine, index: int) -> LoraAdmin:
    """Load ``IMGEDIT_LORA_ADAPTERS`` (on the engine thread, like every change to the model), then follow the
    commands every worker shares, replaying those given before this worker started.

    Raises:
        StartupError: a LoRA does not load.
    """
    load_named_loras(settings, loras, engine)
    lora_admin = LoraAdmin(loras, engine, settings.lora_dir)
    lora_admin.sync = LoraSync.from_environment(lora_admin.apply, index)
    lora_admin.sync.start()
    return lora_admin


def start_or_stop_server(settings: Settings, index: int = 0) -> Worker:
    """:func:`start_worker`, draining on SIGTERM; or stop the whole server with a one-line message when it fails."""
    try:
        worker = start_worker(settings, index)
    except StartupError as error:
        stop_server(f"imgedit: {error}")
    except Exception as error:
        traceback.print_exc()
        stop_server(f"imgedit: start-up failed: {type(error).__name__}: {one_line(error)}")
    worker.drain_on_signals(settings.shutdown_grace)
    return worker


def _stop_server(message: str) -> None:
    """What a worker does when its ranks fail while serving: stop the whole server, so that it is restarted."""
    stop_server(f"imgedit: {message}; stopping the server")
