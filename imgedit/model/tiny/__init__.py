"""Built-in tiny models: real diffusers pipelines with tiny random weights.

Every ``tiny:NAME`` model is a real diffusers pipeline class whose components
(transformer or UNet, VAE, text encoders, tokenizers, processors) are built in
code from a fixed seed: no download, about a second to build, and a 64x64 edit
in a fraction of a second on a CPU. Their pictures are noise, but every code
path of the real model runs, which makes them the models for trying the server
without a GPU and for the test suite. One module per family builds them.

Pipeline classes are imported from their own modules: diffusers' root exports
them lazily, and a type checker sees only stand-ins there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from imgedit.model.pipeline import Pipeline

PREFIX = "tiny:"
#: The tiny model ``make serve`` serves, and start-up suggests when a real model cannot be had.
TINY_DEFAULT = "tiny:qwen-image-edit-plus"
#: Steps every tiny model defaults to: enough to exercise the scheduler, few enough to be quick.
TINY_STEPS = 4
#: The square side ``size=auto`` aims at with a tiny model: what its tests use, quick on any CPU.
TINY_SIDE = 64
T = TypeVar("T")


@dataclass(frozen=True)
class TinyModel:
    """A built tiny pipeline, the step count it defaults to, and the area ``size=auto`` aims at."""

    pipeline: Pipeline
    default_steps: int
    native_pixels: int = TINY_SIDE * TINY_SIDE


def seeded(build: Callable[[], T]) -> T:
    """``build()`` with torch's global generator reset, so random weights are the same on every build."""
    import torch

    torch.manual_seed(0)
    return build()


def finish(pipeline: Pipeline) -> TinyModel:
    """A built tiny pipeline, quiet and ready to serve."""
    pipeline.set_progress_bar_config(disable=True)
    return TinyModel(pipeline=pipeline, default_steps=TINY_STEPS)


#: ``tiny:NAME`` -> ``module:function`` building it (imported only when asked for).
TINY_MODELS: dict[str, str] = {
    "qwen-image-edit-plus": "imgedit.model.tiny.qwen:build_qwen_image_edit_plus",
    "qwen-image-edit": "imgedit.model.tiny.qwen:build_qwen_image_edit",
    "qwen-image-edit-inpaint": "imgedit.model.tiny.qwen:build_qwen_image_edit_inpaint",
    "flux-kontext": "imgedit.model.tiny.flux_kontext:build_flux_kontext",
    "flux-kontext-inpaint": "imgedit.model.tiny.flux_kontext:build_flux_kontext_inpaint",
    "flux2": "imgedit.model.tiny.flux2:build_flux2",
    "flux2-klein": "imgedit.model.tiny.flux2:build_flux2_klein",
    "flux2-klein-inpaint": "imgedit.model.tiny.flux2:build_flux2_klein_inpaint",
    "instruct-pix2pix": "imgedit.model.tiny.stable_diffusion:build_instruct_pix2pix",
    "sdxl-instruct-pix2pix": "imgedit.model.tiny.stable_diffusion:build_sdxl_instruct_pix2pix",
    "stable-diffusion": "imgedit.model.tiny.stable_diffusion:build_stable_diffusion",
    "stable-diffusion-inpaint": "imgedit.model.tiny.stable_diffusion:build_stable_diffusion_inpaint",
}


def is_tiny(model: str) -> bool:
    return model.startswith(PREFIX)


def known_names() -> list[str]:
    return [PREFIX + name for name in TINY_MODELS]


def export_tiny(name: str, directory: str) -> str:
    """Write ``tiny:NAME`` as a diffusers pipeline directory that ``IMGEDIT_MODEL=DIRECTORY`` serves; return its class.

    Raises:
        KeyError: with the known names, when NAME is not one of them.
    """
    pipeline = build_tiny(name if is_tiny(name) else PREFIX + name).pipeline
    pipeline.save_pretrained(directory)
    return type(pipeline).__name__


def build_tiny(model: str) -> TinyModel:
    """Build ``tiny:NAME``.

    Raises:
        KeyError: with the known names, when NAME is not one of them.
    """
    name = model[len(PREFIX) :]
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {model!r}; known: " + ", ".join(known_names()))
    module, function = TINY_MODELS[name].split(":")
    return getattr(importlib.import_module(module), function)()
