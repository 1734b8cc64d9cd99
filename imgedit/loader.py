"""Find and load the pipeline named by ``IMGEDIT_MODEL``.

Three sources are accepted:

* ``tiny:NAME``: a built-in tiny model (see :mod:`imgedit.tiny`);
* a local directory holding a diffusers ``model_index.json``;
* a Hugging Face repo id, loaded with diffusers' ``from_pretrained`` (the
  pipeline class comes from ``model_index.json``; ``HF_HOME``,
  ``HF_HUB_OFFLINE`` and the other hub variables apply as usual).

The model is placed on CUDA when available (bfloat16) and on the CPU
otherwise (float32), unless ``IMGEDIT_DEVICE``/``IMGEDIT_DTYPE`` say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imgedit.config import TINY_MODEL, Settings
from imgedit.tiny import build_tiny, is_tiny

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelLoadError(Exception):
    """The configured model cannot be found or loaded; the message is one line for the operator."""


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline ready to run, and where it came from."""

    pipeline: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    #: Step count the source recommends over the family default (tiny models).
    default_steps: int | None = None


def _hint(model: str, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model {model!r}: {reason}. Without a GPU or the weights, serve the built-in "
        f"tiny model instead: IMGEDIT_MODEL={TINY_MODEL} (this is what `make serve` does)."
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_model_source(settings: Settings) -> None:
    """Fail fast, before any worker starts, when the model or its device cannot be had.

    Checks that a tiny name is known, that a directory holds ``model_index.json``,
    or that a hub repo's ``model_index.json`` can be had (from the cache, or
    the hub when online). Weights are not downloaded here.

    Raises:
        ModelLoadError: saying what is missing and how to run the tiny model.
    """
    pick_device(settings.device)
    model = settings.model
    if is_tiny(model):
        from imgedit.tiny import PREFIX, TINY_MODELS

        if model[len(PREFIX) :] not in TINY_MODELS:
            known = ", ".join(PREFIX + name for name in TINY_MODELS)
            raise ModelLoadError(f"IMGEDIT_MODEL: unknown tiny model {model!r}; known: {known}")
        return
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"cannot load model {model!r}: the directory has no model_index.json (not a diffusers pipeline)"
            )
        return
    if model.startswith((".", "/", "~")):
        raise _hint(model, "no such directory")
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model, "model_index.json")
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        raise _hint(
            model, f"model_index.json is neither in the Hugging Face cache nor downloadable ({_one_line(exc)})"
        ) from None


def pick_device(setting: str) -> torch.device:
    """The device ``IMGEDIT_DEVICE`` asks for.

    Raises:
        ModelLoadError: CUDA was asked for and there is none.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("IMGEDIT_DEVICE: 'cuda' was asked for, but no CUDA device is available")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def load_model(settings: Settings) -> LoadedModel:
    """Load the pipeline onto its device.

    Raises:
        ModelLoadError: when the model cannot be loaded, with a one-line reason.
    """
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    model = settings.model
    if is_tiny(model):
        try:
            tiny = build_tiny(model)
        except KeyError as exc:
            raise ModelLoadError(f"IMGEDIT_MODEL: {exc.args[0]}") from None
        pipeline = tiny.pipeline.to(device=device, dtype=dtype)
        return LoadedModel(pipeline, model, device, dtype, default_steps=tiny.default_steps)

    from diffusers import DiffusionPipeline

    try:
        pipeline = DiffusionPipeline.from_pretrained(model, dtype=dtype)
    except Exception as exc:  # diffusers and the hub raise many kinds; all mean "cannot load"
        raise _hint(model, _one_line(exc)) from None
    pipeline.set_progress_bar_config(disable=True)
    try:
        pipeline = pipeline.to(device)
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"cannot load model {model!r}: not enough memory on {device}") from None
    return LoadedModel(pipeline, model, device, dtype)
