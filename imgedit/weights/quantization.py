"""Quantized weights: ``IMGEDIT_QUANTIZE``, checkpoints published quantized, and ``IMGEDIT_TRANSFORMER``.

``IMGEDIT_QUANTIZE`` converts weights while ``from_pretrained`` loads them,
through diffusers' :class:`~diffusers.PipelineQuantizationConfig` (one
configuration per component: diffusers' own class for diffusers models,
transformers' for the text encoders):

========  ==============================================  =====================  ==================
value     configuration                                   bytes per weight       runs on
========  ==============================================  =====================  ==================
``int8``  torchao ``Int8WeightOnlyConfig``                1 (+5 per row)         CPU and CUDA
``fp8``   torchao ``Float8DynamicActivationFloat8Weight``  1 (+4 per row)         CUDA, capability 8.9+
``nf4``   bitsandbytes 4-bit NF4 (``load_in_4bit``)       0.5 (+4 per 64)        CUDA, ``imgedit[nf4]``
========  ==============================================  =====================  ==================

Only the weights of ``nn.Linear`` layers are converted (that is what both
backends quantize); biases, norms, embeddings and convolutions keep the
pipeline's dtype. ``IMGEDIT_QUANTIZE_COMPONENTS`` names the components to
convert (default: the denoiser, ``transformer`` or ``unet``).

A checkpoint saved quantized (its component's ``config.json`` has a
``quantization_config``) loads as published, whatever ``IMGEDIT_QUANTIZE``
says for the other components. ``IMGEDIT_TRANSFORMER`` replaces the denoiser
by a single file: a ``.gguf`` (kept quantized in memory, dequantized layer by
layer while computing) or a ``.safetensors``.

Everything a setting combination cannot do is refused here, in one line naming
the variable, before any weight is read; :func:`lora_refusal` is the one
place that says whether LoRAs work on a quantized base.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgedit.weights.options import LoadOptions, QuantizationOptions

#: ``IMGEDIT_QUANTIZE`` value -> the backend that runs it.
BACKENDS = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}
#: CUDA compute capability from which the GPU has FP8 matrix units (Ada, Hopper, Blackwell).
FP8_CAPABILITY = (8, 9)
#: Single files ``IMGEDIT_TRANSFORMER`` takes, by suffix.
SINGLE_FILE_SUFFIXES = (".gguf", ".safetensors")
#: Offloading modes each backend's weights cannot take in diffusers 0.42, and why.
OFFLOAD_REFUSALS = {
    ("torchao", "group"): "streamed group offloading cannot pin torchao's int8 tensors (diffusers issue 14433)",
    ("torchao", "sequential"): "sequential offloading rebuilds parameters and loses torchao's tensor subclasses",
    ("bitsandbytes", "group"): "group offloading does not move bitsandbytes' 4-bit weights",
    ("bitsandbytes", "sequential"): "sequential offloading does not move bitsandbytes' 4-bit weights",
    ("gguf", "sequential"): "sequential offloading drops the GGUF quantization type (diffusers issue 14691)",
}


class QuantizationError(Exception):
    """A weights setting cannot work here; the message is one line naming the variable."""


@dataclass(frozen=True)
class SingleFile:
    """The file ``IMGEDIT_TRANSFORMER`` names: a local path, or ``repo`` and ``filename`` on the hub."""

    text: str
    path: str | None = None
    repo: str | None = None
    filename: str | None = None

    def hub_file(self) -> tuple[str, str]:
        """The hub repo and the file's path in it (for a file that is not local)."""
        assert self.repo is not None and self.filename is not None, "a local file has no hub location"
        return self.repo, self.filename

    @property
    def backend(self) -> str | None:
        """``gguf`` for a GGUF file (its weights stay quantized), None for plain safetensors."""
        return "gguf" if self.text.lower().endswith(".gguf") else None


@dataclass(frozen=True, kw_only=True)
class WeightsPlan:
    """How each model component's weights will be loaded, decided before any is read.

    Attributes:
        models: component name -> ``(library, class name)`` from ``model_index.json``.
        denoiser: ``transformer`` or ``unet`` (empty when the pipeline has neither).
        quantize: component -> ``IMGEDIT_QUANTIZE`` value converting it while loading.
        published: component -> backend its checkpoint was saved with (``torchao``, ``bitsandbytes``...).
        published_kind: component -> the method of a published torchao or bitsandbytes checkpoint, when known.
        single_file: the file replacing the denoiser, if any.
    """

    models: dict[str, tuple[str, str]]
    denoiser: str
    quantize: dict[str, str] = field(default_factory=dict)
    published: dict[str, str] = field(default_factory=dict)
    published_kind: dict[str, str] = field(default_factory=dict)
    single_file: SingleFile | None = None

    def backends(self) -> dict[str, str]:
        """Component -> quantization backend of its weights as loaded (components in full precision are absent)."""
        backends = {name: BACKENDS[method] for name, method in self.quantize.items()}
        backends.update(self.published)
        if self.single_file is not None and self.single_file.backend:
            backends[self.denoiser] = self.single_file.backend
        return backends

    def options(self) -> list[str]:
        """Short descriptions for the start-up log line and ``imgedit_model_info``."""
        described = [f"quantize={method}:{name}" for name, method in self.quantize.items()]
        described += [f"published={backend}:{name}" for name, backend in self.published.items()]
        if self.single_file is not None:
            described.append(f"{self.denoiser}={Path(self.single_file.text).name}")
        return described


def parse_single_file(value: str) -> SingleFile:
    """``IMGEDIT_TRANSFORMER``: a local ``.gguf``/``.safetensors`` file, or ``owner/repo/path/in/repo.gguf``.

    Raises:
        QuantizationError: the suffix is not one of those, a local file is missing, or a hub path has no file part.
    """
    if not value.lower().endswith(SINGLE_FILE_SUFFIXES):
        raise QuantizationError(f"IMGEDIT_TRANSFORMER: {value!r} is neither a .gguf nor a .safetensors file")
    path = Path(value).expanduser()
    if path.is_file():
        return SingleFile(value, path=str(path))
    parts = value.split("/")
    if value.startswith((".", "/", "~")) or len(parts) < 3 or not all(parts):
        raise QuantizationError(
            f"IMGEDIT_TRANSFORMER: {value!r} is not a file here, nor a hub path like owner/repo/file.gguf"
        )
    return SingleFile(value, repo="/".join(parts[:2]), filename="/".join(parts[2:]))


def check_device(options: QuantizationOptions, device: torch.device) -> None:
    """Refuse an ``IMGEDIT_QUANTIZE`` this device or this installation cannot run, before anything loads.

    Raises:
        QuantizationError: naming ``IMGEDIT_QUANTIZE`` (or ``IMGEDIT_TRANSFORMER``), and what would run here.
    """
    method = options.method
    if options.components and method == "none":
        raise QuantizationError("IMGEDIT_QUANTIZE_COMPONENTS: set, but IMGEDIT_QUANTIZE is none; set both or neither")
    if method == "fp8":
        if device.type != "cuda":
            raise QuantizationError(
                f"IMGEDIT_QUANTIZE: 'fp8' needs an NVIDIA GPU with FP8 support (compute capability 8.9 or newer), "
                f"and this device is {device}; 'int8' runs here"
            )
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_CAPABILITY:
            raise QuantizationError(
                f"IMGEDIT_QUANTIZE: 'fp8' needs compute capability 8.9 or newer (Ada, Hopper, Blackwell), and "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}; use 'int8' or 'nf4'"
            )
    if method == "nf4" and device.type != "cuda":
        raise QuantizationError(
            f"IMGEDIT_QUANTIZE: 'nf4' runs through bitsandbytes, which diffusers supports only on a GPU, "
            f"and this device is {device}; 'int8' runs here"
        )
    package = {"torchao": "torchao", "bitsandbytes": "bitsandbytes"}.get(BACKENDS.get(method, ""))
    if package and importlib.util.find_spec(package) is None:
        extra = " (pip install 'imgedit[nf4]')" if package == "bitsandbytes" else ""
        raise QuantizationError(
            f"IMGEDIT_QUANTIZE: {method!r} needs the {package} package, which is not installed{extra}"
        )
    if options.transformer:
        single = parse_single_file(options.transformer)
        if single.backend == "gguf" and importlib.util.find_spec("gguf") is None:
            raise QuantizationError("IMGEDIT_TRANSFORMER: a .gguf file needs the gguf package, which is not installed")


def plan_weights(
    options: LoadOptions, index: Mapping[str, Any], read_config: Callable[[str], dict[str, Any] | None]
) -> WeightsPlan:
    """Decide how each component loads, from ``model_index.json`` and the components' ``config.json``.

    Args:
        options: how the model loads (its quantization, and the name of the model for messages).
        index: the pipeline's ``model_index.json``.
        read_config: component name -> its ``config.json`` (None when it has none or it cannot be read).

    Raises:
        QuantizationError: an unknown component is named, a component would be quantized twice, or a
            published checkpoint's backend cannot work with the other settings.
    """
    # The components with weights are those with a config.json (schedulers, tokenizers and processors
    # have their own files); telling them apart so needs no import of diffusers in the supervisor process.
    configs = {
        name: read_config(name)
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[0] in ("diffusers", "transformers")
    }
    models = {name: (index[name][0], index[name][1]) for name, config in configs.items() if config is not None}
    denoiser = next((name for name in ("transformer", "unet") if name in models), "")
    published, published_kind = {}, {}
    for name in models:
        quantization = (configs[name] or {}).get("quantization_config")
        if isinstance(quantization, dict):
            published[name] = str(quantization.get("quant_method", "unknown")).lower()
            published_kind[name] = _published_kind(quantization)
    quantize: dict[str, str] = {}
    quantization = options.quantization
    if quantization.method != "none":
        names = quantization.components or ((denoiser,) if denoiser else ())
        for name in names:
            if name not in models:
                raise QuantizationError(
                    f"IMGEDIT_QUANTIZE_COMPONENTS: {name!r} is not a model of this pipeline "
                    f"(its models: {', '.join(models) or 'none'})"
                )
            if name in published:
                raise QuantizationError(
                    f"IMGEDIT_QUANTIZE: the {name} of {options.model!r} is published quantized ({published[name]}) "
                    f"and loads as it is; leave it out of IMGEDIT_QUANTIZE_COMPONENTS"
                )
            quantize[name] = quantization.method
    single_file = parse_single_file(quantization.transformer) if quantization.transformer else None
    if single_file is not None:
        if not denoiser:
            raise QuantizationError(
                "IMGEDIT_TRANSFORMER: this pipeline has neither a transformer nor a UNet to replace"
            )
        if denoiser in quantize and single_file.backend:
            raise QuantizationError(
                f"IMGEDIT_QUANTIZE: the {denoiser} comes quantized from {single_file.text!r} (IMGEDIT_TRANSFORMER); "
                f"name the other components in IMGEDIT_QUANTIZE_COMPONENTS (e.g. text_encoder)"
            )
        published.pop(denoiser, None)
        published_kind.pop(denoiser, None)
    return WeightsPlan(
        models=models,
        denoiser=denoiser,
        quantize=quantize,
        published=published,
        published_kind=published_kind,
        single_file=single_file,
    )


def check_combination(options: LoadOptions, plan: WeightsPlan, device: torch.device) -> None:
    """Refuse settings that do not work with the planned weights: offloading, fused LoRAs, the device.

    Raises:
        QuantizationError: naming the variable that has to change.
    """
    for name, backend in plan.backends().items():
        if backend == "bitsandbytes" and device.type != "cuda":
            raise QuantizationError(
                f"IMGEDIT_MODEL: the {name} is quantized with bitsandbytes, which diffusers runs only on a GPU, "
                f"and this device is {device}"
            )
        if plan.published_kind.get(name) == "fp8" and device.type != "cuda":
            raise QuantizationError(f"IMGEDIT_MODEL: the {name} is published in FP8, which needs a GPU with FP8")
        reason = OFFLOAD_REFUSALS.get((backend, options.offload))
        if reason:
            raise QuantizationError(
                f"IMGEDIT_OFFLOAD: {options.offload!r} does not work with the {name}'s {backend} weights: {reason}; "
                f"use IMGEDIT_OFFLOAD=model"
            )
        if options.loras:
            refusal = lora_refusal(backend, fuse=options.fuse_loras)
            if refusal:
                # Name the variable to change: the fusing, when unfused LoRAs would work.
                fusing_only = options.fuse_loras and lora_refusal(backend, fuse=False) is None
                raise QuantizationError(f"{'IMGEDIT_LORA_FUSE' if fusing_only else 'IMGEDIT_LORA'}: {refusal}")
        if options.chosen_loras and (refusal := lora_refusal(backend, fuse=False)):
            raise QuantizationError(f"IMGEDIT_LORA_ADAPTERS: {refusal}")


def lora_refusal(backend: str, *, fuse: bool) -> str | None:
    """Why LoRAs cannot go on weights quantized by ``backend`` (None: they can).

    The one answer to "quantized base + LoRAs", for LoRAs loaded at start-up and any loaded later.
    Unfused LoRAs run beside the quantized layer (peft wraps torchao, bitsandbytes and GGUF layers);
    fusing adds the LoRA into the weight, which torchao and bitsandbytes re-quantize and GGUF cannot.
    """
    if backend not in ("torchao", "bitsandbytes", "gguf"):
        return f"LoRA adapters on weights quantized with {backend} are not supported"
    if fuse and backend == "gguf":
        return "adapters cannot be fused into GGUF weights (they stay as published); set IMGEDIT_LORA_FUSE=false"
    return None


def quantization_config(plan: WeightsPlan, dtype: torch.dtype) -> Any:
    """The ``PipelineQuantizationConfig`` converting ``plan.quantize``'s components, or None when there are none."""
    if not plan.quantize:
        return None
    from diffusers import PipelineQuantizationConfig

    mapping = {name: _backend_config(method, plan.models[name][0], dtype) for name, method in plan.quantize.items()}
    return PipelineQuantizationConfig(quant_mapping=mapping)


def _backend_config(method: str, library: str, dtype: torch.dtype) -> Any:
    """The configuration object of ``method`` for a model of ``library`` (``diffusers`` or ``transformers``)."""
    owner = importlib.import_module(library)
    if method == "nf4":
        return owner.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return owner.TorchAoConfig(quant_type=torchao_config(method))


def torchao_config(method: str) -> Any:
    """torchao's configuration for ``int8`` or ``fp8``: what diffusers' and transformers' ``TorchAoConfig`` carry."""
    # torchao logs a warning for each CUDA kernel library a CPU-only PyTorch cannot load: noise for an operator.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if method == "int8" else Float8DynamicActivationFloat8WeightConfig()


def load_single_file(
    plan: WeightsPlan, location: str, dtype: torch.dtype, revision: str | None = None, local_only: bool = False
) -> Any:
    """The denoiser of ``plan`` read from its single file, configured like the pipeline's at ``location``.

    Raises:
        QuantizationError: diffusers cannot read this model class from a single file.
        Exception: whatever diffusers or the hub raise while reading it (the loader words them).
    """
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    assert plan.single_file is not None
    single = plan.single_file
    class_name = plan.models[plan.denoiser][1]
    if class_name not in SINGLE_FILE_LOADABLE_CLASSES:
        raise QuantizationError(f"IMGEDIT_TRANSFORMER: diffusers cannot read a {class_name} from a single file")
    path = single.path
    if path is None:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(*single.hub_file(), local_files_only=local_only)
    options: dict[str, Any] = {"config": location, "subfolder": plan.denoiser, "torch_dtype": dtype}
    if revision is not None:
        options["config_revision"] = revision
    if single.backend == "gguf":
        from diffusers import GGUFQuantizationConfig

        options["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    model_class = getattr(importlib.import_module("diffusers"), class_name)
    return model_class.from_single_file(path, **options)


def _published_kind(quantization: Mapping[str, Any]) -> str:
    """``int8``, ``fp8``, ``nf4`` or ``other``: what a saved ``quantization_config`` amounts to, for estimates."""
    if quantization.get("load_in_4bit"):
        return "nf4"
    if quantization.get("load_in_8bit"):
        return "int8"
    quant_type = quantization.get("quant_type")
    name = str(quant_type.get("default", {}).get("_type", "")) if isinstance(quant_type, dict) else str(quant_type)
    if "Float8" in name or "fp8" in name.lower():
        return "fp8"
    if "Int8" in name or "int8" in name.lower():
        return "int8"
    if "Int4" in name or "4" in name:
        return "nf4"
    return "other"
