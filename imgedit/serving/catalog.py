"""The models a server serves: ``IMGEDIT_MODEL``, or the entries of ``IMGEDIT_MODELS``, each with its own settings.

Every entry is served as if it were the server's only model: its settings are
the server's with ``IMGEDIT_MODEL`` and ``IMGEDIT_SERVED_MODEL_NAME`` replaced
by the entry's source and name, and ``IMGEDIT_LORA_ADAPTERS`` and
``IMGEDIT_PRESETS`` by the LoRAs and the speed tiers written for it. Problems are one line naming ``IMGEDIT_MODELS``
and the entry.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from imgedit import metrics
from imgedit.config import Settings
from imgedit.edit import Loras
from imgedit.errors import StartupError
from imgedit.logs import get_logger
from imgedit.lora.admin import BetweenRuns
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import LoraError, parse_named_loras
from imgedit.model.encodings import DEFAULT_MEGABYTES
from imgedit.scheduling.jobs import ModelTurn
from imgedit.serving.recipe import ModelRecipe, PreparedModel, prepare_model
from imgedit.weights.memory import MemoryPlanError, available_bytes, gib
from imgedit.weights.residency import Residency, plan_residency

log = get_logger(__name__)

#: A served name: what a client sends as ``model`` (no comma, no ``=``, no spaces around it).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}")


@dataclass(frozen=True)
class ModelEntry:
    """One served model: the name clients send as ``model``, and where it comes from."""

    name: str
    source: str


def model_entries(settings: Settings) -> list[ModelEntry]:
    """The served models, the default (for requests without ``model``) first.

    Raises:
        StartupError: naming ``IMGEDIT_MODELS`` and the entry at fault.
    """
    if settings.models is None:
        return [ModelEntry(settings.served_name, settings.model)]
    both = {"model", "served_model_name"} & settings.model_fields_set
    if both:
        names = " and ".join(f"IMGEDIT_{name.upper()}" for name in sorted(both))
        raise StartupError(f"IMGEDIT_MODELS: not with {names}; name every model in IMGEDIT_MODELS")
    entries: list[ModelEntry] = []
    for written in settings.models.split(","):
        entry = _entry(written.strip())
        if any(entry.name == seen.name for seen in entries):
            raise StartupError(f"IMGEDIT_MODELS: {entry.name!r} names two models; give one of them NAME=SOURCE")
        entries.append(entry)
    return entries


def _entry(written: str) -> ModelEntry:
    if not written:
        raise StartupError("IMGEDIT_MODELS: an empty entry; write SOURCE or NAME=SOURCE, comma-separated")
    name, equals, source = written.partition("=")
    if not equals:
        name, source = "", written
    name, source = name.strip(), source.strip()
    if not source:
        raise StartupError(f"IMGEDIT_MODELS: {written!r} has no source; write SOURCE or NAME=SOURCE")
    name = name or Settings.model_construct(model=source).served_name
    if not _NAME.fullmatch(name):
        raise StartupError(
            f"IMGEDIT_MODELS: {name!r} cannot be a model name; use letters, digits and . _ - : / (at most 256)"
        )
    return ModelEntry(name, source)


def served_settings(settings: Settings) -> list[Settings]:
    """The settings that serve each model, the default's first: the server's, with the model's source, name and
    LoRAs (see :func:`model_entries`).

    Raises:
        StartupError: naming ``IMGEDIT_MODELS`` or ``IMGEDIT_LORA_ADAPTERS`` and the entry at fault.
    """
    entries = model_entries(settings)
    if settings.models is None:
        return [settings]
    loras = _loras_by_model(settings.lora_adapters, entries)
    presets = _presets_by_model(settings.presets, entries)
    return [
        settings.model_copy(
            update={
                "model": entry.source,
                "served_model_name": entry.name,
                "models": None,
                "lora_adapters": ",".join(loras[entry.name]) or None,
                "presets": presets.get(entry.name),
            }
        )
        for entry in entries
    ]


def _presets_by_model(written: str | None, entries: list[ModelEntry]) -> dict[str, str]:
    """``IMGEDIT_PRESETS`` shared out: ``MODEL=FILE`` for model ``MODEL``, a plain ``FILE`` for the default.

    Raises:
        StartupError: a model given two files.
    """
    presets: dict[str, str] = {}
    names = {entry.name for entry in entries}
    for item in (part.strip() for part in (written or "").split(",") if part.strip()):
        model, equals, path = item.partition("=")
        if equals and model.strip() not in names and not _is_file(item):
            raise StartupError(
                f"IMGEDIT_PRESETS: {item!r}: {model.strip()!r} is no served model; write MODEL=FILE with one of "
                f"{', '.join(sorted(names))}, or FILE for the first"
            )
        model, path = (model.strip(), path.strip()) if equals and model.strip() in names else (entries[0].name, item)
        if model in presets:
            raise StartupError(f"IMGEDIT_PRESETS: {model!r} is given two files; give each model one (MODEL=FILE)")
        presets[model] = path
    return presets


def _loras_by_model(written: str | None, entries: list[ModelEntry]) -> dict[str, list[str]]:
    """``IMGEDIT_LORA_ADAPTERS`` shared out: ``MODEL/NAME=SOURCE`` attaches to model ``MODEL``, ``NAME=SOURCE`` to
    the default. (A LoRA's name has no ``/``, so the last one before ``=`` ends the model's name.)"""
    loras: dict[str, list[str]] = {entry.name: [] for entry in entries}
    seen: set[str] = set(loras)
    for item in (part.strip() for part in (written or "").split(",") if part.strip()):
        left, equals, _ = item.partition("=")
        if not equals:  # not NAME=SOURCE at all: the first model's, whose parser says what is wrong
            loras[entries[0].name].append(item)
            continue
        left = left.strip()
        model, slash, name = left.rpartition("/")
        model = model if slash else entries[0].name
        if model not in loras:
            raise StartupError(
                f"IMGEDIT_LORA_ADAPTERS: {item!r} is for {model!r}, which IMGEDIT_MODELS does not serve; "
                f"served: {', '.join(loras)}"
            )
        if name in seen:
            raise StartupError(
                f"IMGEDIT_LORA_ADAPTERS: the name {name!r} is taken (by a model or another adapter); each adapter "
                "needs a name of its own, since a request's model may name it"
            )
        seen.add(name)
        loras[model].append(item[len(left) - len(name) :].lstrip() if slash else item)
    return loras


def check_several(settings: Settings, models: int) -> None:
    """Refuse what several models cannot share yet: settings that describe one model's weights or ranks; and
    ``IMGEDIT_RESIDENT_MODELS`` beyond the ``models`` served.

    Raises:
        StartupError: naming the setting.
    """
    resident = settings.resident_models
    if resident is not None and resident > models:
        served = "one model is served" if models == 1 else f"only {models} models are served"
        raise StartupError(f"IMGEDIT_RESIDENT_MODELS={resident}: {served}")
    if models == 1:
        return
    refused = {
        "IMGEDIT_LORA": settings.lora is not None,
        "IMGEDIT_FAMILY": settings.family is not None,
        "IMGEDIT_TRANSFORMER": settings.transformer is not None,
        "IMGEDIT_DEVICE_MAP": settings.device_map != "none",
        "IMGEDIT_OFFLOAD (the models are swapped whole instead: IMGEDIT_RESIDENT_MODELS)": settings.offload != "none",
        "IMGEDIT_*_DEGREE and IMGEDIT_CFG_PARALLEL": settings.ranks_per_edit > 1,
    }
    for name, set_here in refused.items():
        if set_here:
            raise StartupError(f"IMGEDIT_MODELS: not with {name}, which describes one model (serve it alone)")


def load_others(served: list[Settings], first: PreparedModel, slot: int) -> tuple[list[PreparedModel], Residency]:
    """Load the models after the first, and decide which stay on the device.

    Each loads on the device alone, the ones before it waiting in host memory,
    so that the loader's memory plan checks it there; then :func:`plan_residency`
    decides how many fit at once and the first of them go back.

    Args:
        served: every model's settings, the default's first.
        first: the default model, loaded on the device.

    Raises:
        StartupError: naming ``IMGEDIT_MODELS`` (and the model) or ``IMGEDIT_RESIDENT_MODELS``.
    """
    residency = Residency(first.loaded.device, on_swap=_count_swap)
    models = [first]
    sizes: dict[str, int] = {}
    try:
        for settings in served:
            if settings is not served[0]:
                models.append(_prepare_other(settings, slot))
            model, name = models[-1], settings.served_name
            sizes[name] = sum(model.loaded.parameter_bytes.values())
            residency.add(name, model.loaded.pipeline)
            residency.park(name, sizes[name], check=settings.memory_check)
        device, settings = first.loaded.device, served[0]
        budget = settings.memory_budget_gib
        available = available_bytes(device, budget) if device.type != "cpu" or budget is not None else None
        megabytes = settings.encoding_cache_mb
        if megabytes is None:
            megabytes = DEFAULT_MEGABYTES.get(device.type, DEFAULT_MEGABYTES["cpu"])
        kept = len(sizes) * megabytes * 2**20
        try:
            plan = plan_residency(
                sizes, wanted=settings.resident_models, available=available, where=str(device), kept=kept
            )
        except MemoryPlanError as error:
            if settings.memory_check:
                raise
            log.warning("memory check off (IMGEDIT_MEMORY_CHECK=false): %s", error)
            plan = plan_residency(sizes, wanted=settings.resident_models or 1, available=None, where=str(device))
    except MemoryPlanError as error:
        message = str(error)
        raise StartupError(message if message.startswith("IMGEDIT_") else f"IMGEDIT_MODELS: {message}") from None
    residency.keep(plan.slots, list(sizes))
    log.info(
        "%d of %d models on %s at once (about %s at worst); the others wait in host memory",
        plan.slots,
        len(sizes),
        device,
        gib(plan.device_need),
    )
    return models[1:], residency


def _is_file(path: str) -> bool:
    """Whether ``path`` names a file, as ``IMGEDIT_PRESETS`` reads it (no ``~``): False for a path no file system
    takes (too long, a NUL byte)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def model_turn(name: str, model: PreparedModel, loras: LoraRegistry, residency: Residency | None) -> ModelTurn:
    """What the engine needs of served model ``name``: before each run it is brought onto the device (with
    several models), then its LoRAs are switched."""

    def bring_then_switch(chosen: Loras) -> None:
        assert residency is not None
        residency.bring(name)
        loras.activate(chosen)

    return ModelTurn(
        name=name,
        prepare=loras.activate if residency is None else bring_then_switch,
        previewer=model.family.preview,
        fusable=model.family.fusable,
        ready=None if residency is None else functools.partial(residency.on_device, name),
    )


def load_named_loras(settings: Settings, loras: LoraRegistry, engine: BetweenRuns, named: str = "") -> None:
    """Load the model's ``IMGEDIT_LORA_ADAPTERS`` on the engine thread, like every change to the model.

    Args:
        named: the model, for the message (another model of ``IMGEDIT_MODELS`` than the first).

    Raises:
        StartupError: a LoRA does not load.
    """
    where = f"{named}: " if named else ""
    for name, spec in parse_named_loras(settings.lora_adapters or ""):
        try:
            engine.between_runs(functools.partial(loras.load, name, spec)).result()
        except LoraError as error:
            raise StartupError(f"IMGEDIT_LORA_ADAPTERS: {where}{error}") from None


def _prepare_other(settings: Settings, slot: int) -> PreparedModel:
    """Another model of ``IMGEDIT_MODELS``, loaded beside the default; its failures name it."""
    try:
        return prepare_model(ModelRecipe.from_settings(settings), slot)
    except StartupError as error:
        raise StartupError(f"IMGEDIT_MODELS: {settings.served_name}: {error}") from None


def _count_swap(name: str, seconds: float) -> None:
    metrics.model_swaps.labels(name).inc()
    metrics.model_swap_time.observe(seconds)
