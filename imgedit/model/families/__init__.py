"""Model families: one per module, chosen from the loaded pipeline's class (or by ``IMGEDIT_FAMILY``)."""

from __future__ import annotations

from imgedit.model.families.base import Family, GuidanceError
from imgedit.model.families.flux2 import Flux2Family, Flux2KleinFamily
from imgedit.model.families.flux_kontext import FluxKontextFamily
from imgedit.model.families.qwen_image_edit import QwenImageEditFamily, QwenImageEditPlusFamily
from imgedit.model.families.stable_diffusion import InstructPix2PixFamily, StableDiffusionFamily
from imgedit.model.pipeline import Pipeline

FAMILIES: tuple[type[Family], ...] = (
    QwenImageEditPlusFamily,
    QwenImageEditFamily,
    FluxKontextFamily,
    Flux2Family,
    Flux2KleinFamily,
    InstructPix2PixFamily,
    StableDiffusionFamily,
)

__all__ = ["FAMILIES", "Family", "GuidanceError", "UnsupportedPipeline", "family_class_for", "family_names"]


class UnsupportedPipeline(Exception):
    """No family serves this pipeline, or the forced family does not exist."""


def family_names() -> list[str]:
    return [family.name for family in FAMILIES]


def family_class_for(pipeline: Pipeline, name: str | None = None) -> type[Family]:
    """The family serving ``pipeline``: the one called ``name`` when forced, or the one listing its class.

    A pipeline class that subclasses a listed one is served by that class's family.
    """
    if name is not None:
        for family in FAMILIES:
            if family.name == name:
                return family
        raise UnsupportedPipeline(f"IMGEDIT_FAMILY: unknown family {name!r}; known: {', '.join(family_names())}")
    for cls in type(pipeline).__mro__:
        for family in FAMILIES:
            if cls.__name__ in family.pipeline_classes():
                return family
    supported = ", ".join(name for family in FAMILIES for name in family.pipeline_classes())
    raise UnsupportedPipeline(
        f"no family serves the pipeline class {type(pipeline).__name__}; supported: {supported} "
        "(IMGEDIT_FAMILY forces one)"
    )
