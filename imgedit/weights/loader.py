"""Load and place the pipeline that :class:`~imgedit.weights.options.LoadOptions` names.

Placement: CUDA when available (bfloat16) and the CPU otherwise (float32),
unless ``IMGEDIT_DEVICE``/``IMGEDIT_DTYPE`` say otherwise; ``IMGEDIT_DEVICE_MAP``
spreads components over several GPUs and ``IMGEDIT_OFFLOAD`` keeps them in CPU
memory until used. LoRAs every run uses (``IMGEDIT_LORA``) are loaded before placement.

Weights: ``IMGEDIT_QUANTIZE`` converts components while they load,
``IMGEDIT_TRANSFORMER`` replaces the denoiser by a single file, and before
anything loads the memory plan checks that the model fits (see
:mod:`imgedit.weights.plan`). A tiny model with either option is saved to a
temporary directory first and loaded back with ``from_pretrained``, the path
real models take.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgedit.edit import Loras
from imgedit.errors import one_line
from imgedit.lora.sources import LoraError, apply_loras, parse_loras
from imgedit.model.devices import DeviceError, pick_device, pick_dtype
from imgedit.model.pipeline import Pipeline
from imgedit.model.tiny import build_tiny, known_names
from imgedit.ranks.plans import pretrained_components
from imgedit.weights.memory import Footprint, MemoryPlanError, footprint, parameter_bytes
from imgedit.weights.options import LoadOptions
from imgedit.weights.plan import check_memory, plan_for, pretrained_options, read_pipeline, saved_footprints
from imgedit.weights.quantization import QuantizationError, WeightsPlan, check_device
from imgedit.weights.sources import (
    ModelLoadError,
    ModelSource,
    bentoml_model_path,
    parse_source,
    pipeline_location,
    unavailable,
)


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A pipeline ready to run, and where it came from.

    Attributes:
        pipeline: the placed pipeline.
        model_id: ``IMGEDIT_MODEL`` as configured.
        device: where it runs (the first GPU of a spread model).
        dtype: its floating-point type.
        default_steps: the step count the source recommends over the family default (tiny models).
        native_pixels: the output area ``size=auto`` should aim at instead of the family's (tiny models).
        options: how the weights were loaded, for the log and ``imgedit_model_info`` (``quantize=int8:transformer``).
        parameter_bytes: component -> bytes its parameters and buffers occupy as loaded (measured).
        always_on: the LoRAs of ``IMGEDIT_LORA`` left unfused, with their scales: on for every run.
    """

    pipeline: Pipeline
    model_id: str
    device: torch.device
    dtype: torch.dtype
    default_steps: int | None = None
    native_pixels: int | None = None
    options: tuple[str, ...] = ()
    parameter_bytes: dict[str, int] = field(default_factory=dict)
    always_on: Loras = ()


def check_placement(options: LoadOptions, device: torch.device) -> None:
    """Refuse placements this device cannot do and quantization it cannot run, before anything loads.

    Raises:
        ModelLoadError: naming the variable.
    """
    try:
        check_device(options.quantization, device)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None
    if options.offload != "none" and device.type != "cuda":
        raise ModelLoadError(f"IMGEDIT_OFFLOAD: offloading to the CPU needs a CUDA device, and this one is {device}")
    if options.device_map != "none" and device.type != "cuda":
        raise ModelLoadError(f"IMGEDIT_DEVICE_MAP: spreading a model over GPUs needs CUDA, and this device is {device}")
    if options.device_map != "none" and options.offload != "none":
        raise ModelLoadError("IMGEDIT_DEVICE_MAP and IMGEDIT_OFFLOAD cannot be combined; choose one")


def check_source(options: LoadOptions, device: torch.device) -> None:
    """Fail fast, before any worker starts, when the model cannot be had as configured.

    Checks that a tiny name is known, that a saved pipeline is where the source says
    (see :func:`~imgedit.weights.sources.pipeline_location`), and that the quantization
    settings apply to its components. Weights are not downloaded here.

    Raises:
        ModelLoadError: saying what is missing and how to run the tiny model.
    """
    source = parse_source(options.model, options.revision)
    if source.kind == "tiny":
        if source.location not in known_names():
            raise ModelLoadError(
                f"IMGEDIT_MODEL: unknown tiny model {source.location!r}; known: {', '.join(known_names())}"
            )
        if options.device_map != "none":
            raise ModelLoadError("IMGEDIT_DEVICE_MAP: tiny models are built in code and cannot be spread over GPUs")
        return
    location = pipeline_location(options.model, source)
    try:
        index, read_config = read_pipeline(location, source.kind == "hub", source.revision)
    except Exception:  # from_pretrained will report what is wrong with the model
        return
    try:
        plan_for(options, index, read_config, device)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None


def load_model(options: LoadOptions, slot: int = 0) -> LoadedModel:
    """Load the pipeline, add its LoRAs and place it (on slot ``slot``'s GPU, from 0: a worker or a rank).

    Raises:
        ModelLoadError: when the model cannot be loaded, with a one-line reason.
    """
    try:
        device = pick_device(options.device, slot)
        check_device(options.quantization, device)
    except (DeviceError, QuantizationError) as exc:
        raise ModelLoadError(str(exc)) from None
    dtype = pick_dtype(options.dtype, device)
    source = parse_source(options.model, options.revision)
    default_steps = native_pixels = None
    described: list[str] = []
    if source.kind == "tiny":
        try:
            tiny = build_tiny(source.location)
        except KeyError as exc:
            raise ModelLoadError(f"IMGEDIT_MODEL: {exc.args[0]}") from None
        pipeline, default_steps, native_pixels = tiny.pipeline, tiny.default_steps, tiny.native_pixels
        if options.quantization.method != "none" or options.quantization.transformer:
            with tempfile.TemporaryDirectory(prefix="imgedit-tiny-") as directory:
                pipeline.save_pretrained(directory)
                pipeline, described = _from_pretrained(options, ModelSource("directory", directory), dtype, device)
        else:
            models = {name: item for name, item in pipeline.components.items() if isinstance(item, torch.nn.Module)}
            _check_memory(options, {name: footprint(item) for name, item in models.items()}, dtype, device)
            if dtype != torch.float32:  # tiny models are built in float32
                pipeline = pipeline.to(dtype=dtype)
    else:
        pipeline, described = _from_pretrained(options, source, dtype, device)
    try:
        always_on = apply_loras(pipeline, options.loras, fuse=options.fuse_loras)
    except LoraError as exc:
        raise ModelLoadError(f"IMGEDIT_LORA: {exc}") from None
    try:
        _place(pipeline, options, device)
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"cannot load model {options.model!r}: not enough memory on {device}") from None
    sizes = {
        name: parameter_bytes(item) for name, item in pipeline.components.items() if isinstance(item, torch.nn.Module)
    }
    scales = [spec.scale for spec in parse_loras(options.loras)] if options.loras else []
    return LoadedModel(
        pipeline=pipeline,
        model_id=options.model,
        device=device,
        dtype=dtype,
        default_steps=default_steps,
        native_pixels=native_pixels,
        options=tuple(described),
        parameter_bytes=sizes,
        # Unfused IMGEDIT_LORA LoRAs stay on beside the ones requests choose.
        always_on=() if options.fuse_loras else tuple(zip(always_on, scales, strict=True)),
    )


def _check_memory(
    options: LoadOptions,
    footprints: Mapping[str, Footprint],
    dtype: torch.dtype,
    device: torch.device,
    plan: WeightsPlan | None = None,
) -> None:
    try:
        check_memory(options, footprints, dtype, device, plan)
    except MemoryPlanError as exc:
        raise ModelLoadError(f"cannot load model {options.model!r}: {exc}") from None


def _from_pretrained(
    options: LoadOptions, source: ModelSource, dtype: torch.dtype, device: torch.device
) -> tuple[Pipeline, list[str]]:
    """The pipeline loaded with ``from_pretrained`` as the weights plan says, and the plan's descriptions."""
    from diffusers import DiffusionPipeline

    location = str(bentoml_model_path(source.location)) if source.kind == "bentoml" else source.location
    _import_own_components(location, source)
    arguments: dict[str, Any] = {"dtype": dtype}
    if source.revision is not None:
        arguments["revision"] = source.revision
    if options.device_map != "none":
        arguments["device_map"] = options.device_map
    # With IMGEDIT_TP_DEGREE, the transformer is loaded first, each rank reading only its shard.
    arguments.update(pretrained_components(location, source.revision, dtype, options.ranks))
    try:
        index, read_config = read_pipeline(location, source.kind == "hub", source.revision)
        plan = plan_for(options, index, read_config, device)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # no model_index.json, locally or on the hub
        raise unavailable(options.model, one_line(exc)) from None
    footprints = saved_footprints(plan, read_config)
    if footprints is not None:
        _check_memory(options, footprints, dtype, device, plan)
    try:
        arguments.update(pretrained_options(plan, location, dtype, source.revision))
        pipeline: Pipeline = DiffusionPipeline.from_pretrained(location, **arguments)
    except QuantizationError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:  # diffusers and the hub raise many kinds; all mean "cannot load"
        raise unavailable(options.model, one_line(exc)) from None
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


def _place(pipeline: Pipeline, options: LoadOptions, device: torch.device) -> None:
    """Move ``pipeline`` onto ``device``, or arrange CPU offloading onto it."""
    if options.device_map != "none":
        return  # from_pretrained placed every component
    if options.offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif options.offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    elif options.offload == "group":
        pipeline.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,  # prefetches the next block while the current one computes
        )
    else:
        pipeline.to(device)
