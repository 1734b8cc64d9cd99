"""Speed tiers behind ``quality`` (``IMGEDIT_PRESETS``): a YAML or JSON file that maps levels to recipes.

Without it, ``quality`` runs a share of the model's default steps. With it, each
level the file names runs its recipe: request fields (steps, guidance, a
LoRA...) used where the request leaves them unset, and the server's speed
settings (``cfg_until``, ``cache``...) for that edit alone. ``auto`` runs
``high``, as the response reports. A level the file leaves out works as
without presets, and so does whatever a recipe leaves out::

    low:                        # 4 steps with a step-distilled LoRA
      lora: lightning
      num_inference_steps: 4
      true_cfg_scale: 1.0
    medium:
      cfg_until: 0.5
      cache: first_block

Every key and value is checked when the server starts, against the same
bounds as the request field or the setting of the same name, and anything
wrong stops it with one line naming ``IMGEDIT_PRESETS`` and the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, cast

import pydantic
import yaml

from imgedit.api.fields import FIELDS_BY_NAME
from imgedit.api.json_text import check_value
from imgedit.api.lora import parse_lora
from imgedit.config import Settings
from imgedit.edit import EditOptions, LoraChoice, Quality
from imgedit.errors import RequestError, StartupError, one_line
from imgedit.lora.sources import parse_named_loras
from imgedit.model.acceleration import StepCache, use_step_cache
from imgedit.model.call import PipelineCall
from imgedit.model.families import Family, GuidanceError
from imgedit.model.spec import Levers

#: The levels a file may name: OpenAI's ``quality`` values but ``auto``, which runs ``high``.
LEVELS = ("low", "medium", "high", "xhigh", "max")
#: Request fields a recipe may set: used when the request leaves them unset.
REQUEST_KEYS = (
    "num_inference_steps",
    "guidance_scale",
    "true_cfg_scale",
    "image_guidance_scale",
    "strength",
    "negative_prompt",
    "input_fidelity",
    "lora",
)
#: Server settings a recipe may set for its edits, each the ``IMGEDIT_`` setting of the same name.
LEVER_KEYS = ("cfg_until", "cache", "cache_threshold", "cache_interval")
#: How a refusal of the ``lora`` field starts, which the key in a preset's message already says.
_LORA_PREFIX = "Invalid value for 'lora': "
#: The largest file read: a few recipes take a few hundred bytes.
MAX_FILE_BYTES = 1 << 20


class PresetError(ValueError):
    """The presets cannot be used; the message is one line naming the key at fault (without the variable)."""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What one ``quality`` level runs.

    Attributes:
        level: the level (``low`` ... ``max``).
        options: values of :class:`~imgedit.edit.EditOptions` fields, for requests that leave them unset.
        loras: the LoRAs to run with, for requests that choose none.
        levers: values of the ``IMGEDIT_`` speed settings in :data:`LEVER_KEYS`, by key.
    """

    level: Quality
    options: Mapping[str, Any]
    loras: tuple[LoraChoice, ...] = ()
    levers: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def fill(self, options: EditOptions) -> EditOptions:
        """``options`` with this recipe's values where the request left them unset (None)."""
        unset = {key: value for key, value in self.options.items() if getattr(options, key) is None}
        return dataclasses.replace(options, **unset)

    def levers_over(self, server: Levers) -> Levers:
        """The server's speed settings with this recipe's in their place."""
        if not self.levers:
            return server
        cache = server.cache or StepCache()
        if {"cache", "cache_threshold", "cache_interval"} & self.levers.keys():
            cache = StepCache(
                kind=self.levers.get("cache", cache.kind),
                threshold=self.levers.get("cache_threshold", cache.threshold),
                interval=self.levers.get("cache_interval", cache.interval),
            )
        return Levers(cfg_until=self.levers.get("cfg_until", server.cfg_until), cache=cache)


@dataclass(frozen=True)
class Presets:
    """The recipes of ``IMGEDIT_PRESETS``, by level."""

    recipes: Mapping[str, Recipe]

    def for_quality(self, quality: Quality) -> Recipe | None:
        """The recipe ``quality`` runs (``auto`` runs ``high``); None where the file names none."""
        return self.recipes.get("high" if quality == "auto" else quality)


def load_presets(path: str) -> Presets:
    """Read and check the presets file at ``path``: YAML, or JSON (which YAML reads too).

    Raises:
        PresetError: it cannot be read, parsed or used.
    """
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise PresetError(f"cannot read {path}: {error.strerror or one_line(error)}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PresetError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return parse_presets(data)


def parse_presets(data: bytes) -> Presets:
    """The presets in ``data``, the text of a YAML or JSON file.

    Raises:
        PresetError: not UTF-8, not YAML, not a mapping of levels to recipes, or a key or value out of bounds.
    """
    try:
        document = yaml.load(data.decode("utf-8"), Loader=_UniqueKeys)  # a SafeLoader, see below
    except UnicodeDecodeError:
        raise PresetError("the file is not UTF-8 text") from None
    except Exception as error:  # YAMLError, and what its constructors raise on values they cannot build
        raise PresetError(f"not valid YAML or JSON: {one_line(error)}") from None
    if not isinstance(document, dict) or not document:
        raise PresetError(f"the file must map quality levels ({', '.join(LEVELS)}) to recipes")
    recipes = {}
    for level, recipe in document.items():
        if level not in LEVELS:
            raise PresetError(f"{_shown(level)}: not a quality level; use {', '.join(LEVELS)}")
        recipes[level] = _recipe(cast(Quality, level), recipe)
    return Presets(recipes)


class _UniqueKeys(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """YAML's safe loader, refusing a key given twice in one mapping (which would silently keep the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        for index, key in enumerate(keys):
            try:
                repeated = key in keys[:index]
            except TypeError:  # an unhashable key: the base class says so
                break
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"{_shown(key)} is given twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _recipe(level: Quality, document: Any) -> Recipe:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PresetError(f"{level}: a recipe maps keys to values, not {type(document).__name__}")
    for key in document:
        if key not in REQUEST_KEYS + LEVER_KEYS:
            raise PresetError(f"{level}.{_shown(key)}: unknown key; use {', '.join(REQUEST_KEYS + LEVER_KEYS)}")
    values = dict(document)
    for key, value in values.items():
        if not isinstance(value, str):  # the others are numbers, or LoRA choices, which parse_lora checks
            continue
        try:
            check_value(value, key)  # what no tokenizer or log line takes: a lone surrogate
        except RequestError as error:
            raise PresetError(f"{level}.{key}: {error.message}") from None
    loras: tuple[LoraChoice, ...] = ()
    if "lora" in values:
        try:
            loras = parse_lora(values.pop("lora"))
        except RequestError as error:
            raise PresetError(f"{level}.lora: {error.message.removeprefix(_LORA_PREFIX)}") from None
        if any(choice.path is not None or choice.name is None for choice in loras):
            raise PresetError(f"{level}.lora: name LoRAs of IMGEDIT_LORA_ADAPTERS; a recipe loads no path")
    try:
        checked = _RECIPE.model_validate(values)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise PresetError(f"{level}.{key}: {first['msg']}") from None
    given = checked.model_dump(exclude_unset=True, exclude_none=True)  # null leaves a key unset, as no key does
    return Recipe(
        level=level,
        options={key: value for key, value in given.items() if key in REQUEST_KEYS},
        loras=loras,
        levers={key: value for key, value in given.items() if key in LEVER_KEYS},
    )


def _shown(key: Any) -> str:
    """A key of the file as a message shows it: printable, and short."""
    text = str(key)
    return re.sub(r"[^\x20-\x7e]", "?", text[:40]) + ("..." if len(text) > 40 else "")


def _request_field(name: str) -> tuple[Any, Any]:
    """The type and bounds of request field ``name``, as :mod:`imgedit.api.fields` declares them."""
    field = FIELDS_BY_NAME[name]
    types: dict[str, Any] = {"integer": int, "number": float, "text": str}
    annotation = Literal[field.choices] if field.kind == "choice" else types[field.kind]
    return (annotation | None, pydantic.Field(None, ge=field.low, le=field.high))


def _setting(name: str) -> tuple[Any, Any]:
    """The type and bounds of setting ``name``, as :class:`~imgedit.config.Settings` declares them."""
    info = Settings.model_fields[name]
    annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return (Optional[annotation], None)  # noqa: UP045  # a type built at run time: ``|`` needs a class


#: What a recipe's values must be: request fields checked as requests are, levers as the settings are.
_FIELDS: dict[str, Any] = {
    **{name: _request_field(name) for name in REQUEST_KEYS if name != "lora"},
    **{name: _setting(name) for name in LEVER_KEYS},
}
_RECIPE = pydantic.create_model("PresetRecipe", __config__=pydantic.ConfigDict(extra="forbid", strict=True), **_FIELDS)


def check_presets(
    presets: Presets,
    family: Family[Any],
    *,
    ranks: int,
    context: bool,
    named_loras: Sequence[str],
    max_prompt_chars: int,
) -> None:
    """What each recipe asks of the loaded model, tried before the server takes edits (not run: see
    :func:`tier_levers`).

    Args:
        ranks: the ranks of each edit (per-request LoRAs need one).
        context: whether they split the sequence (FirstBlockCache cannot).
        named_loras: the names of ``IMGEDIT_LORA_ADAPTERS``, the LoRAs a recipe may name.
        max_prompt_chars: ``IMGEDIT_MAX_PROMPT_CHARS``, which a recipe's negative prompt keeps to.

    Raises:
        PresetError: naming the level and key at fault.
    """
    for recipe in presets.recipes.values():
        level, levers = recipe.level, recipe.levers_over(family.levers)
        negative_prompt = recipe.options.get("negative_prompt")
        if negative_prompt is not None and len(negative_prompt) > max_prompt_chars:
            raise PresetError(f"{level}.negative_prompt: longer than IMGEDIT_MAX_PROMPT_CHARS ({max_prompt_chars})")
        try:
            family.check_levers(levers)
        except GuidanceError as error:
            raise PresetError(f"{level}.cfg_until: {error}") from None
        cache = levers.cache or StepCache()
        if cache.kind == "first_block" and context:
            raise PresetError(f"{level}.cache: 'first_block' decides on each rank's slice of the sequence")
        try:
            use_step_cache(family.pipeline, cache)
        except ValueError as error:
            raise PresetError(f"{level}.cache: {error}") from None
        finally:
            use_step_cache(family.pipeline, family.levers.cache or StepCache())
        try:  # planned as a request of this tier would be: the family's own limits (steps left, tokens)
            family.warmup_plans(recipe.fill(EditOptions(prompt="warm-up", quality=recipe.level, seed=0)), levers)
        except RequestError as error:
            raise PresetError(f"{level}: {error.message}") from None
        for choice in recipe.loras:
            if ranks > 1:
                raise PresetError(f"{level}.lora: per-request adapters need one rank per edit")
            if choice.name not in named_loras:
                raise PresetError(f"{level}.lora: {choice.name!r} is not one of IMGEDIT_LORA_ADAPTERS")


def tier_levers(presets: Presets, family: Family[Any]) -> dict[str, Levers]:
    """The speed settings of each level whose settings differ from the server's: the warm-up runs each once."""
    levers = {level: recipe.levers_over(family.levers) for level, recipe in presets.recipes.items()}
    return {level: chosen for level, chosen in levers.items() if chosen != family.levers}


def serving_presets(settings: Settings, family: Family[Any], ranks: int = 1, context: bool = False) -> Presets | None:
    """The model's ``IMGEDIT_PRESETS``, read and checked against its family (None when it has none).

    Args:
        ranks: ranks per edit; context: whether they split the sequence (Ulysses or ring).

    Raises:
        StartupError: naming the variable, the level and the key.
    """
    if settings.presets is None:
        return None
    named_loras = [name for name, _ in parse_named_loras(settings.lora_adapters or "")]
    try:
        presets = load_presets(settings.presets)
        check_presets(
            presets,
            family,
            ranks=ranks,
            context=context,
            named_loras=named_loras,
            max_prompt_chars=settings.max_prompt_chars,
        )
    except PresetError as error:
        raise StartupError(f"IMGEDIT_PRESETS: {error}") from None
    return presets


def warm_up_tiers(
    run: Callable[[Sequence[PipelineCall]], object], family: Family[Any], presets: Presets | None
) -> None:
    """Run each tier whose speed settings differ from the server's once with ``run`` (the engine's ``run_now``), so
    that a step cache this pipeline cannot run, say, fails here rather than on every edit of the tier.

    Raises:
        StartupError: naming the variable and the level.
    """
    for level, levers in tier_levers(presets, family).items() if presets is not None else ():
        try:
            for plan in family.warmup_plans(levers=levers):
                run(plan.calls)
        except Exception as error:
            raise StartupError(f"IMGEDIT_PRESETS: {level}: this model cannot run the tier: {one_line(error)}") from None
