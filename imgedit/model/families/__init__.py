"""Model-family adapters, chosen from the loaded pipeline's class (or by ``IMGEDIT_FAMILY``)."""

from __future__ import annotations

from typing import Any

from imgedit.model.families.base import FamilyAdapter
from imgedit.model.families.flux2 import Flux2Adapter, Flux2KleinAdapter
from imgedit.model.families.flux_kontext import FluxKontextAdapter
from imgedit.model.families.qwen_image_edit import QwenImageEditAdapter, QwenImageEditPlusAdapter
from imgedit.model.families.stable_diffusion import InstructPix2PixAdapter, StableDiffusionAdapter

ADAPTERS: tuple[type[FamilyAdapter], ...] = (
    QwenImageEditPlusAdapter,
    QwenImageEditAdapter,
    FluxKontextAdapter,
    Flux2Adapter,
    Flux2KleinAdapter,
    InstructPix2PixAdapter,
    StableDiffusionAdapter,
)

__all__ = ["ADAPTERS", "FamilyAdapter", "UnsupportedPipeline", "adapter_class_for", "family_names"]


class UnsupportedPipeline(Exception):
    """No adapter serves this pipeline, or the forced family does not exist."""


def family_names() -> list[str]:
    return [adapter.name for adapter in ADAPTERS]


def adapter_class_for(pipeline: Any, family: str | None = None) -> type[FamilyAdapter]:
    """The adapter class serving ``pipeline``: the forced ``family``, or the one listing its class.

    A pipeline class that subclasses a listed one is served by that class's adapter.
    """
    if family is not None:
        for adapter in ADAPTERS:
            if adapter.name == family:
                return adapter
        raise UnsupportedPipeline(f"IMGEDIT_FAMILY: unknown family {family!r}; known: {', '.join(family_names())}")
    for cls in type(pipeline).__mro__:
        for adapter in ADAPTERS:
            if cls.__name__ in adapter.pipeline_classes():
                return adapter
    supported = ", ".join(name for adapter in ADAPTERS for name in adapter.pipeline_classes())
    raise UnsupportedPipeline(
        f"no adapter serves the pipeline class {type(pipeline).__name__}; supported: {supported} "
        "(IMGEDIT_FAMILY forces one)"
    )
