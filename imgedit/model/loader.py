"""Find, load and place the pipeline named by ``IMGEDIT_MODEL``.

Model sources:

* ``tiny:NAME``: a built-in tiny model (see :mod:`imgedit.model.tiny`);
* ``bentoml:NAME[:TAG]``: a model in the BentoML model store (``imgedit
  import-model`` puts one there; ``bentoml build`` then packs it into the Bento);
* a local directory holding a diffusers ``model_index.json``;
* a Hugging Face repo id, loaded with diffusers' ``from_pretrained`` at
  ``IMGEDIT_MODEL_REVISION`` (the pipeline class comes from ``model_index.json``;
  ``HF_HOME``, ``HF_HUB_OFFLINE`` and the other hub variables apply as usual).

Placement: CUDA when available (bfloat16) and the CPU otherwise (float32),
unless ``IMGEDIT_DEVICE``/``IMGEDIT_DTYPE`` say otherwise; ``IMGEDIT_DEVICE_MAP``
spreads components over several GPUs and ``IMGEDIT_OFFLOAD`` keeps them in CPU
memory until used. LoRA adapters (``IMGEDIT_LORA``) are loaded before placement.

Weights: ``IMGEDIT_QUANTIZE`` converts components while they load,
``IMGEDIT_TRANSFORMER`` replaces the denoiser by a single file, and before
anything loads the memory plan checks that the model fits (see
:mod:`imgedit.model.weights`). A tiny model with either option is saved to a
temporary directory first and loaded back with ``from_pretrained``, the path
real models take.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from imgedit.config import TINY_MODEL, Settings
from imgedit.errors import one_line
from imgedit.model.acceleration import OptionError, check_options
from imgedit.model.families import family_names
from imgedit.model.lora import LoraError, apply_loras, parse_loras, parse_named_loras
from imgedit.model.memory import MemoryPlanError, footprint, parameter_bytes
from imgedit.model.parallel import Layout, pretrained_components
from imgedit.model.quantization import QuantizationError, check_device
from imgedit.model.tiny import build_tiny, is_tiny, known_names
from imgedit.model.weights import check_memory, plan_for, pretrained_options, read_pipeline, saved_footprints

BENTOML_PREFIX = "bentoml:"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelLoadError(Exception):
    """The configured model cannot be found or loaded; the message is one line for the operator."""


@dataclass(frozen=True)
class ModelSource:
    """Where ``IMGEDIT_MODEL`` points: a tiny model name, a store tag, a directory or a hub repo id."""

    kind: Literal["tiny", "bentoml", "directory", "hub"]
    location: str
    revision: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline ready to run, and where it came from."""

    pipeline: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    #: Step count the source recommends over the family default (tiny models).
    default_steps: int | None = None
    #: Output area ``size=auto`` should aim at instead of the family's (tiny models).
    native_pixels: int | None = None
    #: How the weights were loaded, for the log and ``imgedit_model_info`` (``quantize=int8:transformer``...).
    options: tuple[str, ...] = ()
    #: Component -> bytes its parameters and buffers occupy as loaded (measured).
    parameter_bytes: dict[str, int] = field(default_factory=dict)
    #: Adapters of ``IMGEDIT_LORA`` left unfused, with their scales: on for every run.
    always_on: tuple[tuple[str, float], ...] = ()


def parse_source(settings: Settings) -> ModelSource:
    model = settings.model
    if is_tiny(model):
        return ModelSource("tiny", model)
    if model.startswith(BENTOML_PREFIX):
        return ModelSource("bentoml", model[len(BENTOML_PREFIX) :])
    if Path(model).expanduser().is_dir() or model.startswith((".", "/", "~")):
        return ModelSource("directory", str(Path(model).expanduser()))
    return ModelSource("hub", model, settings.model_revision)


def _hint(model: str, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load model {model!r}: {reason}. Without a GPU or the weights, serve the built-in "
        f"tiny model instead: IMGEDIT_MODEL={TINY_MODEL} (this is what `make serve` does)."
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


def check_model_source(settings: Settings) -> None:
    """Fail fast, before any worker starts, when the model or its device cannot be had.

    Checks that a tiny name is known, that a store model or a directory holds
    ``model_index.json``, or that a hub repo's ``model_index.json`` can be had
    (from the cache, or the hub when online), and that the device options fit
    this machine. Weights are not downloaded here.

    Raises:
        ModelLoadError: saying what is missing and how to run the tiny model.
    """
    device = pick_device(settings.device)
    try:
        check_options(settings, device)
        check_device(settings, device)
    except (OptionError, QuantizationError) as exc:
        raise ModelLoadError(str(exc)) from None
    if settings.offload != "none" and device.type != "cuda":
        raise ModelLoadError(f"IMGEDIT_OFFLOAD: offloading to the CPU needs a CUDA device, and this one is {device}")
    if settings.device_map != "none" and device.type != "cuda":
        raise ModelLoadError(f"IMGEDIT_DEVICE_MAP: spreading a model over GPUs needs CUDA, and this device is {device}")
    if settings.device_map != "none" and settings.offload != "none":
        raise ModelLoadError("IMGEDIT_DEVICE_MAP and IMGEDIT_OFFLOAD cannot be combined; choose one")
    if settings.device_map != "none" and (settings.workers or 1) > 1:
        raise ModelLoadError(
            "IMGEDIT_WORKERS: a model spread over the GPUs (IMGEDIT_DEVICE_MAP) is served by one worker"
        )
    if settings.family is not None and settings.family not in family_names():
        raise ModelLoadError(f"IMGEDIT_FAMILY: unknown family {settings.family!r}; known: {', '.join(family_names())}")
    if settings.lora:
        try:
            parse_loras(settings.lora)
        except LoraError as exc:
            raise ModelLoadError(f"IMGEDIT_LORA: {exc}") from None
    _check_named_loras(settings)
    source = parse_source(settings)
    if source.kind == "tiny":
        if source.location not in known_names():
            raise ModelLoadError(
                f"IMGEDIT_MODEL: unknown tiny model {source.location!r}; known: {', '.join(known_names())}"
            )
        if settings.device_map != "none":
            raise ModelLoadError("IMGEDIT_DEVICE_MAP: tiny models are built in code and cannot be spread over GPUs")
        return
    if source.kind == "bentoml":
        directory = bentoml_model_path(source.location)
    elif source.kind == "directory":
        directory = Path(source.location)
        if not directory.is_dir():
            raise _hint(settings.model, "no such directory")
    else:
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(source.location, "model_index.json", revision=source.revision)
        except Exception as exc:  # the hub client raises many kinds; all mean "not available"
            raise _hint(
                settings.model,
                f"model_index.json is neither in the Hugging Face cache nor downloadable ({one_line(exc)})",
            ) from None
        _check_weights(settings, source.location, source, device)
        return
    if not (directory / "model_index.json").is_file():
        raise ModelLoadError(
            f"cannot load model {settings.model!r}: {directory} has no model_index.json (not a diffusers pipeline)"
        )
    _check_weights(settings, str(directory), source, device)


def _check_weights(settings: Settings, location: str, source: ModelSource, device: torch.device) -> None:
    """Refuse quantization settings that cannot apply to this pipeline's components (read from its configs)."""
    try:
        index, read_config = read_pipeline(location, source.kind == "hub", source.revision)
    except Exception:  # from_pretrained will report what is wrong with the model
        return
    try:
        plan_for(settings, index, read_config, device)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None


def _check_named_loras(settings: Settings) -> None:
    """``IMGEDIT_LORA_ADAPTERS``, ``IMGEDIT_LORA_DIR`` and ``IMGEDIT_MAX_LORAS`` agree.

    Raises:
        ModelLoadError: naming the variable.
    """
    named = []
    if settings.lora_adapters:
        try:
            named = parse_named_loras(settings.lora_adapters)
        except LoraError as exc:
            raise ModelLoadError(f"IMGEDIT_LORA_ADAPTERS: {exc}") from None
    if len(named) > settings.max_loras:
        raise ModelLoadError(
            f"IMGEDIT_MAX_LORAS: {settings.max_loras} is fewer than the {len(named)} adapters of IMGEDIT_LORA_ADAPTERS"
        )
    if settings.lora_dir and not Path(settings.lora_dir).expanduser().is_dir():
        raise ModelLoadError(f"IMGEDIT_LORA_DIR: {settings.lora_dir!r} is not a directory")


def loras_scales(settings: Settings) -> list[float]:
    """The scales of ``IMGEDIT_LORA``'s adapters, in order."""
    return [spec.scale for spec in parse_loras(settings.lora)] if settings.lora else []


def pick_device(setting: str, worker: int = 0) -> torch.device:
    """The device ``IMGEDIT_DEVICE`` asks for; with several GPUs, worker ``worker`` (from 0) gets its own.

    Raises:
        ModelLoadError: CUDA was asked for and there is none.
    """
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("IMGEDIT_DEVICE: 'cuda' was asked for, but no CUDA device is available")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", worker % torch.cuda.device_count())


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def load_model(settings: Settings, worker: int = 0) -> LoadedModel:
    """Load the pipeline, add its LoRA adapters and place it (on worker ``worker``'s GPU, from 0).

    Raises:
        ModelLoadError: when the model cannot be loaded, with a one-line reason.
    """
    device = pick_device(settings.device, worker)
    dtype = pick_dtype(settings.dtype, device)
    source = parse_source(settings)
    try:
        check_device(settings, device)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None
    default_steps = native_pixels = None
    options: list[str] = []
    if source.kind == "tiny":
        try:
            tiny = build_tiny(source.location)
        except KeyError as exc:
            raise ModelLoadError(f"IMGEDIT_MODEL: {exc.args[0]}") from None
        pipeline, default_steps, native_pixels = tiny.pipeline, tiny.default_steps, tiny.native_pixels
        if settings.quantize != "none" or settings.transformer:
            with tempfile.TemporaryDirectory(prefix="imgedit-tiny-") as directory:
                pipeline.save_pretrained(directory)
                pipeline, options = _from_pretrained(settings, ModelSource("directory", directory), dtype, device)
        else:
            models = {name: item for name, item in pipeline.components.items() if isinstance(item, torch.nn.Module)}
            _check_memory(settings, {name: footprint(item) for name, item in models.items()}, dtype, device)
            if dtype != torch.float32:  # tiny models are built in float32
                pipeline = pipeline.to(dtype=dtype)
    else:
        pipeline, options = _from_pretrained(settings, source, dtype, device)
    try:
        always_on = apply_loras(pipeline, settings.lora, fuse=settings.lora_fuse)
    except LoraError as exc:
        raise ModelLoadError(f"IMGEDIT_LORA: {exc}") from None
    try:
        _place(pipeline, settings, device)
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"cannot load model {settings.model!r}: not enough memory on {device}") from None
    sizes = {
        name: parameter_bytes(item) for name, item in pipeline.components.items() if isinstance(item, torch.nn.Module)
    }
    return LoadedModel(
        pipeline,
        settings.model,
        device,
        dtype,
        default_steps=default_steps,
        native_pixels=native_pixels,
        options=tuple(options),
        parameter_bytes=sizes,
        # Unfused IMGEDIT_LORA adapters stay on beside the ones requests choose.
        always_on=() if settings.lora_fuse else tuple(zip(always_on, loras_scales(settings), strict=True)),
    )


def _check_memory(
    settings: Settings, footprints: Any, dtype: torch.dtype, device: torch.device, plan: Any = None
) -> None:
    try:
        check_memory(settings, footprints, dtype, device, plan)
    except MemoryPlanError as exc:
        raise ModelLoadError(f"cannot load model {settings.model!r}: {exc}") from None


def _from_pretrained(
    settings: Settings, source: ModelSource, dtype: torch.dtype, device: torch.device
) -> tuple[Any, list[str]]:
    """The pipeline loaded with ``from_pretrained`` as the weights plan says, and the plan's descriptions."""
    from diffusers import DiffusionPipeline

    location = str(bentoml_model_path(source.location)) if source.kind == "bentoml" else source.location
    _import_own_components(location, source)
    options: dict[str, Any] = {"dtype": dtype}
    if source.revision is not None:
        options["revision"] = source.revision
    if settings.device_map != "none":
        options["device_map"] = settings.device_map
    # With IMGEDIT_TP_DEGREE, the transformer is loaded first, each rank reading only its shard.
    options.update(pretrained_components(location, source.revision, dtype, Layout.from_settings(settings)))
    try:
        index, read_config = read_pipeline(location, source.kind == "hub", source.revision)
        plan = plan_for(settings, index, read_config, device)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # no model_index.json, locally or on the hub
        raise _hint(settings.model, one_line(exc)) from None
    footprints = saved_footprints(plan, read_config)
    if footprints is not None:
        _check_memory(settings, footprints, dtype, device, plan)
    try:
        options.update(pretrained_options(plan, location, dtype, source.revision))
        pipeline = DiffusionPipeline.from_pretrained(location, **options)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # diffusers and the hub raise many kinds; all mean "cannot load"
        raise _hint(settings.model, one_line(exc)) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, plan.options()


def _import_own_components(location: str, source: ModelSource) -> None:
    """Import the imgedit modules a saved pipeline names (a saved tiny model's processor, say).

    diffusers loads components only from libraries already imported, so that
    naming a module in ``model_index.json`` cannot run its code; imgedit's own
    modules are safe to import.
    """
    try:
        if source.kind == "hub":
            from huggingface_hub import hf_hub_download

            index_path = Path(hf_hub_download(location, "model_index.json", revision=source.revision))
        else:
            index_path = Path(location) / "model_index.json"
        index = json.loads(index_path.read_text())
    except Exception:  # from_pretrained will report what is wrong with the model
        return
    for value in index.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("imgedit."):
            importlib.import_module(value[0])


def _place(pipeline: Any, settings: Settings, device: torch.device) -> None:
    """Move ``pipeline`` onto ``device``, or arrange CPU offloading onto it."""
    if settings.device_map != "none":
        return  # from_pretrained placed every component
    if settings.offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif settings.offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    elif settings.offload == "group":
        pipeline.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,  # prefetches the next block while the current one computes
        )
    else:
        pipeline.to(device)
