"""The models a server serves: ``IMGEDIT_MODEL``, or the entries of ``IMGEDIT_MODELS``, each with its own settings.

Every entry is served as if it were the server's only model: its settings are
the server's with ``IMGEDIT_MODEL`` and ``IMGEDIT_SERVED_MODEL_NAME`` replaced
by the entry's source and name. Problems are one line naming ``IMGEDIT_MODELS``
and the entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imgedit.config import Settings
from imgedit.errors import StartupError

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


def entry_settings(settings: Settings, entry: ModelEntry) -> Settings:
    """The settings that serve ``entry``: the server's, with its source and name."""
    return settings.model_copy(update={"model": entry.source, "served_model_name": entry.name, "models": None})


def check_several(settings: Settings) -> None:
    """Refuse what several models cannot share yet: settings that describe one model's weights or ranks.

    Raises:
        StartupError: naming the setting.
    """
    refused = {
        "IMGEDIT_LORA": settings.lora is not None,
        "IMGEDIT_FAMILY": settings.family is not None,
        "IMGEDIT_TRANSFORMER": settings.transformer is not None,
        "IMGEDIT_DEVICE_MAP": settings.device_map != "none",
        "IMGEDIT_*_DEGREE and IMGEDIT_CFG_PARALLEL": settings.ranks_per_edit > 1,
    }
    for name, set_here in refused.items():
        if set_here:
            raise StartupError(f"IMGEDIT_MODELS: not with {name}, which describes one model (serve it alone)")
