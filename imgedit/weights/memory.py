"""The memory plan: what the weights will take, checked before they load, and what they took once loaded.

Before any weight is read, each model component is built on PyTorch's meta
device from its ``config.json`` (shapes only, no memory; a built-in tiny model
is taken as built), and its bytes are counted for the chosen dtype and
quantization (:func:`component_bytes`): floating-point tensors at the dtype's
size, the ``nn.Linear`` weights a quantizer converts at the method's size
(int8: 1 byte and 5 per row; fp8: 1 byte and 4 per row; nf4: half a byte and 4
per 64), files published quantized (a GGUF denoiser) at their size on disk.

The device must then hold, depending on ``IMGEDIT_OFFLOAD``: every component
(no offloading), the largest component (``model``), the non-block part of a
component and two of its blocks (``group``: one computing, one arriving) or its
largest layer (``sequential``); plus working memory for activations, estimated
as ``RESERVE_BYTES`` and ``RESERVE_SHARE`` of the unquantized weights (for
Qwen-Image-Edit-2511 in bf16 that is 6.4 GiB; SGLang's published peak at
1024x1024 with true CFG was 6.7 GB above its weights). That is compared with
the device's free memory (``torch.cuda.mem_get_info``; on the CPU the kernel's
``MemAvailable``), or ``IMGEDIT_MEMORY_BUDGET_GIB`` when set. When it does not
fit, start-up stops with one line listing settings that would
(:func:`check_fits`); ``IMGEDIT_MEMORY_CHECK=false`` only logs it.

After loading, :func:`parameter_bytes` measures the storage each component's
parameters and buffers really occupy, looking inside quantized tensor
subclasses (torchao's ``qdata`` and ``scale``, bitsandbytes' quantization state).
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

GiB = 2**30
#: Working memory beyond the weights: activations, allocator slack, kernel workspaces.
RESERVE_BYTES = 1 * GiB
RESERVE_SHARE = 0.10
#: Extra bytes per output row (int8: a float32 scale and an int8 zero point; fp8: a float32 scale).
_ROW_BYTES = {"int8": 5, "fp8": 4}
#: NF4 stores two weights per byte and one float32 scale per block of 64.
_NF4_BLOCK = 64


class MemoryPlanError(Exception):
    """The model will not fit as configured; the message is one line listing settings that would."""


@dataclass(frozen=True, kw_only=True)
class Footprint:
    """The shapes of one component's tensors, independent of dtype and quantization (counts of elements).

    Attributes:
        float_elements: floating-point parameters and buffers that keep the pipeline's dtype.
        other_bytes: integer and boolean buffers, at their own size.
        linear_elements: weights of the ``nn.Linear`` layers a quantizer converts.
        linear_rows: their output features (a scale per row).
        block_elements: elements inside the component's top-level blocks (``ModuleList`` children).
        largest_block: elements of the largest such block.
        largest_layer: elements of the largest module holding tensors of its own.
        fixed_bytes: bytes known from a file (a GGUF denoiser, a published checkpoint); overrides the counts.
        fixed_kind: how a published checkpoint is quantized (``int8``, ``fp8``, ``nf4``), counted like that.
    """

    float_elements: int = 0
    other_bytes: int = 0
    linear_elements: int = 0
    linear_rows: int = 0
    block_elements: int = 0
    largest_block: int = 0
    largest_layer: int = 0
    fixed_bytes: int | None = None
    fixed_kind: str | None = None

    @property
    def elements(self) -> int:
        return self.float_elements + self.linear_elements


@dataclass(frozen=True)
class Placement:
    """A way to place the model: the quantization of some components, offloading, spreading over GPUs.

    ``components`` are those ``quantize`` converts; they count only when it is not ``none``.
    """

    quantize: str = "none"
    components: tuple[str, ...] = ()
    offload: str = "none"
    device_map: str = "none"

    def variables(self, base: Placement) -> str:
        """The ``IMGEDIT_*=value`` assignments that turn ``base`` into this placement."""
        changed = []
        if self.quantize != base.quantize:
            changed.append(f"IMGEDIT_QUANTIZE={self.quantize}")
        if self.quantize != "none" and self.components != base.components:
            changed.append(f"IMGEDIT_QUANTIZE_COMPONENTS={','.join(self.components)}")
        if self.offload != base.offload:
            changed.append(f"IMGEDIT_OFFLOAD={self.offload}")
        if self.device_map != base.device_map:
            changed.append(f"IMGEDIT_DEVICE_MAP={self.device_map}")
        return " ".join(changed)


def footprint(module: torch.nn.Module) -> Footprint:
    """Count ``module``'s tensors (on the meta device or not), telling apart the weights a quantizer converts.

    The quantizers convert the weights of ``nn.Linear`` layers except, in a diffusers model, those inside its
    ``_keep_in_fp32_modules``, and in a transformers model its output embedding (``lm_head``) and the layer
    holding its last parameter: the rules of diffusers' and transformers' torchao quantizers, followed here.
    """
    skipped: set[int] = set()
    output_embeddings = getattr(module, "get_output_embeddings", None)
    if callable(output_embeddings):  # a transformers model
        skipped.add(id(output_embeddings()))
        last = next(reversed(list(module.named_parameters())), None)
        if last is not None:
            skipped.add(id(module.get_submodule(last[0].rpartition(".")[0])))
        kept: list[str] = []
    else:
        kept = [name for name in (getattr(module, "_keep_in_fp32_modules", None) or []) if name]
    linear_rows = {
        id(sub.weight): sub.weight.shape[0]
        for name, sub in module.named_modules()
        if isinstance(sub, torch.nn.Linear)
        and id(sub) not in skipped
        and not any(key + "." in name + ".weight" for key in kept)
    }
    counts = {"float": 0, "other": 0, "linear": 0, "rows": 0}
    seen: set[int] = set()
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if id(tensor) in seen:
            continue  # tied weights are stored once
        seen.add(id(tensor))
        if id(tensor) in linear_rows:
            counts["linear"] += tensor.numel()
            counts["rows"] += linear_rows[id(tensor)]
        elif tensor.is_floating_point():
            counts["float"] += tensor.numel()
        else:
            counts["other"] += tensor.numel() * tensor.element_size()
    blocks = [
        _elements(block)
        for child in module.children()
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential)
        for block in child
    ]
    layers = [_elements(sub, recurse=False) for sub in module.modules()]
    return Footprint(
        float_elements=counts["float"],
        other_bytes=counts["other"],
        linear_elements=counts["linear"],
        linear_rows=counts["rows"],
        block_elements=sum(blocks),
        largest_block=max(blocks, default=0),
        largest_layer=max(layers, default=0),
    )


def meta_footprints(
    models: Mapping[str, tuple[str, str]], read_config: Callable[[str], dict[str, Any] | None]
) -> dict[str, Footprint]:
    """Footprints of a saved pipeline's models, each built on the meta device from its ``config.json``.

    Args:
        models: component name -> ``(library, class name)``, as ``model_index.json`` gives them.
        read_config: component name -> its ``config.json``.

    Raises:
        ValueError: a component's config is missing or does not build its class.
    """
    footprints = {}
    for name, (library, class_name) in models.items():
        config = dict(read_config(name) or {})
        if not config:
            raise ValueError(f"the {name} has no config.json")
        config.pop("quantization_config", None)  # the shapes, not the conversion
        model_class = getattr(importlib.import_module(library), class_name)
        with torch.device("meta"):
            if library == "diffusers":
                module = model_class.from_config(config)
            else:
                module = model_class._from_config(model_class.config_class.from_dict(config))
        footprints[name] = footprint(module)
    return footprints


def component_bytes(component: Footprint, dtype: torch.dtype, method: str = "none") -> int:
    """Bytes ``component`` takes in ``dtype`` with its linear weights converted by ``method``."""
    if component.fixed_bytes is not None:
        return component.fixed_bytes
    method = component.fixed_kind or method
    size = torch.empty((), dtype=dtype).element_size()
    total = component.float_elements * size + component.other_bytes
    linear = component.linear_elements
    if method in _ROW_BYTES:
        return total + linear + component.linear_rows * _ROW_BYTES[method]
    if method == "nf4":
        return total + (linear + 1) // 2 + -(-linear // _NF4_BLOCK) * 4
    return total + linear * size


@dataclass(frozen=True)
class Need:
    """What a placement asks of the device, in bytes.

    Attributes:
        total: resident weights and working memory: the figure compared with what is available.
        weights: each component's weights, in the footprints' order.
        resident: the weights on the device at once.
        reserve: the working memory.
    """

    total: int
    weights: list[int]
    resident: int
    reserve: int


def device_need(
    footprints: Mapping[str, Footprint], dtype: torch.dtype, placement: Placement, devices: int = 1
) -> Need:
    """What ``placement`` needs on the device (with ``device_map``: on the fullest of ``devices`` GPUs).

    With ``device_map`` whole components are placed largest first on the emptiest GPU, as an estimate
    of what diffusers' ``balanced`` placement does.
    """
    weights = [
        component_bytes(item, dtype, placement.quantize if name in placement.components else "none")
        for name, item in footprints.items()
    ]
    full = sum(component_bytes(item, dtype) for item in footprints.values() if item.fixed_bytes is None)
    reserve = RESERVE_BYTES + int(RESERVE_SHARE * full)
    if placement.offload == "model":
        resident = max(weights, default=0)
    elif placement.offload in ("group", "sequential"):
        streamed = [
            _streamed(item, size, placement.offload) for item, size in zip(footprints.values(), weights, strict=True)
        ]
        resident = max(streamed, default=0)
    elif placement.device_map != "none" and devices > 1:
        loads = [0] * devices
        for size in sorted(weights, reverse=True):
            loads[loads.index(min(loads))] += size
        resident = max(loads)
    else:
        resident = sum(weights)
    return Need(resident + reserve, weights, resident, reserve)


def _streamed(item: Footprint, size: int, offload: str) -> int:
    """Bytes of ``item`` on the device at once when it streams in (``size``: all of it)."""
    per_element = size / max(item.elements, 1)
    if offload == "sequential":
        return int(item.largest_layer * per_element)
    rest = item.elements - item.block_elements
    return int((rest + 2 * item.largest_block) * per_element)


def check_fits(
    footprints: Mapping[str, Footprint],
    dtype: torch.dtype,
    placement: Placement,
    available: int,
    *,
    where: str,
    alternatives: Iterable[Placement] = (),
    devices: int = 1,
) -> Need:
    """Return what ``placement`` needs, or refuse when that is more than ``available``.

    Raises:
        MemoryPlanError: one line with each component's weights, what is available, and the
            ``alternatives`` that would fit (the first four, in the order given), each with its need.
    """
    need = device_need(footprints, dtype, placement, devices)
    if need.total <= available:
        return need
    parts = ", ".join(f"{name} {gib(size)}" for name, size in zip(footprints, need.weights, strict=True))
    fitting = []
    for option in alternatives:
        option_need = device_need(footprints, dtype, option, devices).total
        if option_need <= available and option != placement:
            fitting.append(f"{option.variables(placement)} (about {gib(option_need)})")
    advice = (
        "settings that would fit: " + "; ".join(fitting[:4]) if fitting else "no setting imgedit knows of would fit"
    )
    raise MemoryPlanError(
        f"the model needs about {gib(need.total)} on {where} (weights: {parts}; {gib(need.resident)} of them "
        f"resident at once, plus {gib(need.reserve)} working memory) and {gib(available)} is available; "
        f"{advice}. IMGEDIT_MEMORY_CHECK=false starts anyway"
    )


def with_fixed(
    footprints: Mapping[str, Footprint], fixed: Mapping[str, int], kinds: Mapping[str, str]
) -> dict[str, Footprint]:
    """``footprints`` with some components' bytes known from files, or their published quantization."""
    updated = dict(footprints)
    for name, size in fixed.items():
        updated[name] = replace(updated.get(name, Footprint()), fixed_bytes=size)
    for name, kind in kinds.items():
        if name in updated and kind in ("int8", "fp8", "nf4"):
            updated[name] = replace(updated[name], fixed_kind=kind)
    return updated


def available_bytes(device: torch.device, budget_gib: float | None = None) -> int:
    """Memory the model may use on ``device``: ``budget_gib`` when given, else what is free now."""
    if budget_gib is not None:
        return int(budget_gib * GiB)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_available_bytes()


def host_available_bytes() -> int:
    """The host memory available to a new allocation (Linux ``MemAvailable``; free pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes ``module``'s parameters and buffers occupy as loaded, each tensor once.

    A tensor subclass (torchao's quantized weights) is measured by the tensors it is made of
    (``__tensor_flatten__``), since its own size is that of the dense tensor it stands for; a
    bitsandbytes weight adds its ``quant_state`` (block scales).
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        total += _tensor_bytes(tensor, seen)
    return total


def _tensor_bytes(tensor: Any, seen: set[tuple[int, int]]) -> int:
    if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
        return 0
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in names)
    key = (tensor.data_ptr(), tensor.nbytes)
    if key in seen:
        return 0
    seen.add(key)
    total = tensor.nbytes
    state = getattr(tensor, "quant_state", None)
    while state is not None:  # bitsandbytes: absmax and code, then the state of the nested quantization
        total += sum(value.nbytes for value in vars(state).values() if isinstance(value, torch.Tensor))
        state = getattr(state, "state2", None)
    return total


def _elements(module: torch.nn.Module, recurse: bool = True) -> int:
    tensors = itertools.chain(module.parameters(recurse=recurse), module.buffers(recurse=recurse))
    return sum(tensor.numel() for tensor in {id(tensor): tensor for tensor in tensors}.values())


def gib(size: float) -> str:
    """``size`` bytes for a person: GiB with one decimal, or MiB below a tenth of one."""
    return f"{size / GiB:.1f} GiB" if size >= 0.1 * GiB else f"{size / 2**20:.1f} MiB"
