"""How a worker's model is made, as one picklable object: load, choose its family, split it, apply options.

Rank 0 of every worker prepares its model with :func:`prepare_model`; with
several ranks per edit it sends the same :class:`ModelRecipe` to the other
ranks (inside their :class:`~imgedit.ranks.group.RankSetup`), which prepare
theirs with :func:`prepare_family`, so that every rank builds the same family
from the same settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imgedit.config import Settings
from imgedit.errors import StartupError
from imgedit.model.acceleration import AccelerationOptions, OptionError, apply_options
from imgedit.model.encodings import DEFAULT_MEGABYTES, EncodingCache
from imgedit.model.families import Family, GuidanceError, UnsupportedPipeline, family_class_for
from imgedit.model.spec import Defaults, Levers
from imgedit.ranks.plans import ParallelError, check_model, enable_parallelism
from imgedit.serving.options import acceleration_options, default_overrides, load_options
from imgedit.weights.loader import LoadedModel, load_model
from imgedit.weights.options import LoadOptions
from imgedit.weights.sources import ModelLoadError


@dataclass(frozen=True, kw_only=True)
class ModelRecipe:
    """Everything that decides a worker's model, and nothing of the server around it.

    Attributes:
        load: where the model is and how it loads (the ranks included).
        acceleration: the speed and memory options applied after loading.
        family: ``IMGEDIT_FAMILY``, a forced family; None picks it from the pipeline class.
        overrides: the operator's ``IMGEDIT_DEFAULT_*`` overrides of the family's defaults.
        max_images: ``IMGEDIT_MAX_IMAGES``; None keeps the family's default.
        cfg_until: ``IMGEDIT_CFG_UNTIL``, the fraction of the steps that run guidance.
        encoding_cache_mb: ``IMGEDIT_ENCODING_CACHE_MB``; None picks the device's default.
    """

    load: LoadOptions
    acceleration: AccelerationOptions
    family: str | None = None
    overrides: Defaults = field(default_factory=Defaults)
    max_images: int | None = None
    cfg_until: float = 1.0
    encoding_cache_mb: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRecipe:
        return cls(
            load=load_options(settings),
            acceleration=acceleration_options(settings),
            family=settings.family,
            overrides=default_overrides(settings),
            max_images=settings.max_images,
            cfg_until=settings.cfg_until,
            encoding_cache_mb=settings.encoding_cache_mb,
        )


@dataclass(frozen=True, kw_only=True)
class PreparedModel:
    """A loaded model, the family serving it, and what was applied to it (for the log and the metrics)."""

    loaded: LoadedModel
    family: Family[Any]
    options: tuple[str, ...]


def prepare_model(recipe: ModelRecipe, slot: int, loaded_everywhere: Callable[[], None] | None = None) -> PreparedModel:
    """Load the model on device ``slot``, split it over the ranks, apply the options, build its family.

    Every rank of a worker runs this, rank 0 as part of start-up.

    Args:
        loaded_everywhere: called once the model is loaded and checked here,
            before the ranks split it together; it returns once every rank is there.

    Raises:
        StartupError: the model cannot be loaded or served as configured.
    """
    layout = recipe.load.ranks
    try:
        loaded = load_model(recipe.load, slot)
        family_class = family_class_for(loaded.pipeline, recipe.family)
        check_model(loaded.pipeline, layout)
        if loaded_everywhere is not None:
            loaded_everywhere()
        enable_parallelism(loaded.pipeline, layout, loaded.device, family_class.guidance_of(loaded.pipeline))
        options = [*loaded.options, *apply_options(loaded.pipeline, recipe.acceleration, loaded.device)]
    except (ModelLoadError, UnsupportedPipeline, OptionError, ParallelError) as error:
        raise StartupError(str(error)) from None
    if layout.ranks > 1:
        options.append(layout.describe())
    overrides = dataclasses.replace(recipe.overrides, steps=recipe.overrides.steps or loaded.default_steps)
    try:
        family = family_class(
            loaded.pipeline,
            overrides=overrides,
            max_images=recipe.max_images,
            native_pixels=loaded.native_pixels,
            levers=Levers(cfg_until=recipe.cfg_until, cache=recipe.acceleration.step_cache),
        )
    except GuidanceError as error:
        raise StartupError(f"IMGEDIT_CFG_UNTIL={recipe.cfg_until:g}: {error}") from None
    except ValueError as error:  # the other setting a family can refuse
        raise StartupError(f"IMGEDIT_MAX_IMAGES: {error}") from None
    megabytes = recipe.encoding_cache_mb
    if megabytes is None:
        megabytes = DEFAULT_MEGABYTES.get(loaded.device.type, DEFAULT_MEGABYTES["cpu"])
    family.keep_encodings(EncodingCache(megabytes * 2**20))
    return PreparedModel(loaded=loaded, family=family, options=tuple(options))


def prepare_family(recipe: ModelRecipe, slot: int, loaded_everywhere: Callable[[], None]) -> Family[Any]:
    """:func:`prepare_model` for an extra rank, which needs only the family (see :mod:`imgedit.ranks.group`)."""
    return prepare_model(recipe, slot, loaded_everywhere).family
