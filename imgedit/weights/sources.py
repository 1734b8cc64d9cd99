"""Where ``IMGEDIT_MODEL`` points, and whether the model can be had there before anything loads.

Model sources:

* ``tiny:NAME``: a built-in tiny model (see :mod:`imgedit.model.tiny`);
* ``bentoml:NAME[:TAG]``: a model in the BentoML model store (``imgedit
  import-model`` puts one there; ``bentoml build`` then packs it into the Bento);
* a local directory holding a diffusers ``model_index.json``;
* a Hugging Face repo id, loaded with diffusers' ``from_pretrained`` at
  ``IMGEDIT_MODEL_REVISION`` (the pipeline class comes from ``model_index.json``;
  ``HF_HOME``, ``HF_HUB_OFFLINE`` and the other hub variables apply as usual).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imgedit.errors import one_line
from imgedit.model.tiny import TINY_DEFAULT, is_tiny

BENTOML_PREFIX = "bentoml:"


class ModelLoadError(Exception):
    """The configured model cannot be found or loaded; the message is one line for the operator."""


@dataclass(frozen=True)
class ModelSource:
    """Where ``IMGEDIT_MODEL`` points: a tiny model name, a store tag, a directory or a hub repo id."""

    kind: Literal["tiny", "bentoml", "directory", "hub"]
    location: str
    revision: str | None = None


def parse_source(model: str, revision: str | None = None) -> ModelSource:
    """The source ``model`` (``IMGEDIT_MODEL``) names; ``revision`` applies to hub repos only."""
    if is_tiny(model):
        return ModelSource("tiny", model)
    if model.startswith(BENTOML_PREFIX):
        return ModelSource("bentoml", model[len(BENTOML_PREFIX) :])
    if Path(model).expanduser().is_dir() or model.startswith((".", "/", "~")):
        return ModelSource("directory", str(Path(model).expanduser()))
    return ModelSource("hub", model, revision)


def unavailable(model: str, reason: str) -> ModelLoadError:
    """The error for a model that cannot be had, with the way to serve the tiny one instead."""
    return ModelLoadError(
        f"cannot load model {model!r}: {reason}. Without a GPU or the weights, serve the built-in "
        f"tiny model instead: IMGEDIT_MODEL={TINY_DEFAULT} (this is what `make serve` does)."
    )


def bentoml_model_path(tag: str) -> Path:
    """The directory of ``tag`` (``NAME`` means its latest version) in the BentoML model store.

    Raises:
        ModelLoadError: no such model in the store.
    """
    import bentoml

    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound:
        raise ModelLoadError(
            f"cannot load model '{BENTOML_PREFIX}{tag}': it is not in the BentoML model store "
            f"(`bentoml models list` shows what is; `imgedit import-model` adds one)"
        ) from None


def pipeline_location(model: str, source: ModelSource) -> str:
    """Where ``from_pretrained`` reads a saved pipeline (a directory or a hub repo id), checking it is there.

    Checks that a store model or a directory holds ``model_index.json``, or that a hub
    repo's ``model_index.json`` can be had (from the cache, or the hub when online).
    Weights are not downloaded here.

    Raises:
        ModelLoadError: saying what is missing and how to run the tiny model.
    """
    if source.kind == "hub":
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(source.location, "model_index.json", revision=source.revision)
        except Exception as exc:  # the hub client raises many kinds; all mean "not available"
            raise unavailable(
                model, f"model_index.json is neither in the Hugging Face cache nor downloadable ({one_line(exc)})"
            ) from None
        return source.location
    directory = bentoml_model_path(source.location) if source.kind == "bentoml" else Path(source.location)
    if source.kind == "directory" and not directory.is_dir():
        raise unavailable(model, "no such directory")
    if not (directory / "model_index.json").is_file():
        raise ModelLoadError(
            f"cannot load model {model!r}: {directory} has no model_index.json (not a diffusers pipeline)"
        )
    return str(directory)
