"""How the weights load: the per-component plan, the memory check before loading, diffusers' options.

The loader asks this module, for a saved pipeline (a directory, the BentoML
store or the hub): how each component loads (:func:`plan_for`, from
``model_index.json`` and the components' ``config.json``), whether that fits
the device (:func:`check_memory`), and what to pass to ``from_pretrained``
(:func:`pretrained_options`). A tiny model built in code with none of these
options is checked against memory from its built modules.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from imgedit.logs import get_logger
from imgedit.weights import memory
from imgedit.weights.options import CONVERSIONS, LoadOptions, Method, QuantizationOptions
from imgedit.weights.quantization import (
    BACKENDS,
    OFFLOAD_REFUSALS,
    QuantizationError,
    SingleFile,
    WeightsPlan,
    check_combination,
    check_device,
    load_single_file,
    plan_weights,
    quantization_config,
)

log = get_logger(__name__)
ConfigReader = Callable[[str], dict[str, Any] | None]
#: How much each change costs a user, to list the alternatives that fit the cheapest first.
_QUANTIZE_COST = {"none": 0.0, "fp8": 1.0, "int8": 1.1, "nf4": 2.0}
_OFFLOAD_COST = {"none": 0.0, "model": 2.0, "group": 2.5, "sequential": 6.0}


def read_pipeline(location: str, hub: bool, revision: str | None = None) -> tuple[dict[str, Any], ConfigReader]:
    """The pipeline's ``model_index.json`` and a reader of its components' ``config.json``.

    Args:
        location: a local pipeline directory, or a hub repo id when ``hub``.
        hub: read through the Hugging Face cache (downloading only these small files when online).
        revision: the hub revision.

    Raises:
        Exception: ``model_index.json`` cannot be had (the loader words it).
    """

    def fetch(relative: str) -> Path:
        if not hub:
            return Path(location) / relative
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(location, relative, revision=revision))

    def read_config(component: str) -> dict[str, Any] | None:
        try:
            return json.loads(fetch(f"{component}/config.json").read_text())
        except Exception:  # no config, or the hub cannot give it: estimated as unknown
            return None

    return json.loads(fetch("model_index.json").read_text()), read_config


def plan_for(
    options: LoadOptions, index: Mapping[str, Any], read_config: ConfigReader, device: torch.device
) -> WeightsPlan:
    """The weights plan of a saved pipeline, checked against the other settings and the device.

    Raises:
        QuantizationError: naming the variable at fault.
    """
    plan = plan_weights(options, index, read_config)
    check_combination(options, plan, device)
    return plan


def check_memory(
    options: LoadOptions,
    footprints: Mapping[str, memory.Footprint],
    dtype: torch.dtype,
    device: torch.device,
    plan: WeightsPlan | None = None,
) -> None:
    """Refuse, before loading, a model that will not fit the device as configured.

    Args:
        footprints: each model component's tensor counts (published and single-file bytes already fixed).
        plan: the weights plan (None: nothing is quantized).

    Raises:
        memory.MemoryPlanError: it does not fit and ``IMGEDIT_MEMORY_CHECK`` is on; lists what would fit.
    """
    denoiser = next((name for name in ("transformer", "unet") if name in footprints), "")
    quantization = options.quantization
    default = quantization.components or ((denoiser,) if denoiser else ())
    base = memory.Placement(quantization.method, default, options.offload, options.device_map)
    devices = torch.cuda.device_count() if device.type == "cuda" else 1
    if options.device_map != "none" and options.memory_budget_gib is None:
        available = min(memory.available_bytes(torch.device("cuda", index)) for index in range(devices))
        where = f"each of {devices} GPUs"
    else:
        available = memory.available_bytes(device, options.memory_budget_gib)
        where = str(device)
    # Components whose quantization is given (published, or a GGUF file) stay as they are in every alternative.
    fixed = {} if plan is None else {name: kind for name, kind in plan.backends().items() if name not in plan.quantize}
    alternatives = _alternatives(options, footprints, device, devices, fixed, default)
    try:
        need = memory.check_fits(
            footprints,
            dtype,
            base,
            available,
            where=where,
            alternatives=alternatives,
            devices=devices,
        )
    except memory.MemoryPlanError as error:
        if options.memory_check:
            raise
        log.warning("memory check off (IMGEDIT_MEMORY_CHECK=false): %s", error)
        return
    if options.offload != "none" and device.type == "cuda":
        host = memory.host_available_bytes()
        if sum(need.weights) > host and options.memory_check:
            raise memory.MemoryPlanError(
                f"IMGEDIT_OFFLOAD: offloaded weights stay in host memory, {memory.gib(sum(need.weights))} of them, "
                f"and {memory.gib(host)} is available. IMGEDIT_MEMORY_CHECK=false starts anyway"
            )
    log.info(
        "memory plan on %s: about %s needed (%s), %s available",
        where,
        memory.gib(need.total),
        ", ".join(f"{name} {memory.gib(size)}" for name, size in zip(footprints, need.weights, strict=True)),
        memory.gib(available),
    )


def saved_footprints(plan: WeightsPlan, read_config: ConfigReader) -> dict[str, memory.Footprint] | None:
    """Footprints of a saved pipeline's models from their configs, with file-sized and published ones fixed.

    None when a component cannot be built on the meta device (the memory check is then skipped, and says so).
    """
    try:
        footprints = memory.meta_footprints(plan.models, read_config)
    except Exception as error:  # an exotic class or a missing config: no estimate rather than no start
        log.warning("memory plan skipped: cannot size the components from their configs (%s)", error)
        return None
    fixed = {}
    if plan.single_file is not None and plan.single_file.backend == "gguf":
        size = single_file_bytes(plan.single_file)
        if size is not None:
            fixed[plan.denoiser] = size
    kinds = {name: kind for name, kind in plan.published_kind.items()}
    if plan.single_file is not None and plan.denoiser not in fixed and plan.single_file.backend == "gguf":
        kinds[plan.denoiser] = "int8"  # size unknown before downloading: counted as 8-bit, the largest common GGUF
    return memory.with_fixed(footprints, fixed, kinds)


def single_file_bytes(single: SingleFile) -> int | None:
    """The size of the single file on disk or in the hub cache, else as the hub reports it (None: unknown)."""
    if single.path is not None:
        return Path(single.path).stat().st_size
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

        cached = try_to_load_from_cache(*single.hub_file())
        if isinstance(cached, str):
            return Path(cached).stat().st_size
        return get_hf_file_metadata(hf_hub_url(*single.hub_file())).size
    except Exception:  # offline and not cached
        return None


def pretrained_options(plan: WeightsPlan, location: str, dtype: torch.dtype, revision: str | None) -> dict[str, Any]:
    """What ``DiffusionPipeline.from_pretrained`` is given beyond the dtype: the single file and the quantization."""
    options: dict[str, Any] = {}
    if plan.single_file is not None:
        options[plan.denoiser] = load_single_file(plan, location, dtype, revision)
    config = quantization_config(plan, dtype)
    if config is not None:
        options["quantization_config"] = config
    return options


def _alternatives(
    options: LoadOptions,
    footprints: Mapping[str, memory.Footprint],
    device: torch.device,
    devices: int,
    fixed: Mapping[str, str],
    default: tuple[str, ...],
) -> list[memory.Placement]:
    """Placements this device can run, the cheapest for the user first."""
    methods: list[Method] = ["none", *(method for method in CONVERSIONS if _runs(options.quantization, method, device))]
    big = tuple(name for name in footprints if "vae" not in name and name not in fixed)
    component_sets = [tuple(name for name in default if name not in fixed)]
    if set(big) - set(component_sets[0]):
        component_sets.append(big)
    offloads = ["none", "model", "group", "sequential"] if device.type == "cuda" else ["none"]
    device_maps = ["none", "balanced"] if device.type == "cuda" and devices > 1 else ["none"]
    placements = []
    for method in methods:
        for components in component_sets if method != "none" else [()]:
            backends = set(fixed.values()) | ({BACKENDS[method]} if method != "none" else set())
            for offload in offloads:
                if any((backend, offload) in OFFLOAD_REFUSALS for backend in backends):
                    continue
                for device_map in device_maps if offload == "none" else ["none"]:
                    cost = _QUANTIZE_COST[method] * (1 if components == component_sets[0] else 1.5)
                    cost += _OFFLOAD_COST[offload] + (0.5 if device_map != "none" else 0)
                    placements.append((cost, memory.Placement(method, components, offload, device_map)))
    return [placement for _, placement in sorted(placements, key=lambda pair: pair[0])]


def _runs(quantization: QuantizationOptions, method: Method, device: torch.device) -> bool:
    try:
        check_device(dataclasses.replace(quantization, method=method, components=()), device)
    except QuantizationError:
        return False
    return True
