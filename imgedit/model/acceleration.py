"""Speed and memory options applied to the loaded pipeline at start-up.

``IMGEDIT_ATTENTION_BACKEND``, ``IMGEDIT_CACHE`` (with ``IMGEDIT_CACHE_THRESHOLD``
or ``IMGEDIT_CACHE_INTERVAL``), ``IMGEDIT_VAE_TILING``, ``IMGEDIT_VAE_SLICING`` and
``IMGEDIT_COMPILE``. Each is checked against the model and the machine, and a
combination that cannot work stops start-up with a message naming the
variable. Attention kernels fetched from the Hugging Face hub are never used:
the server must start without network access. (Placement and offloading are
the loader's.)
"""

from __future__ import annotations

from typing import Any

import torch

from imgedit.config import Settings
from imgedit.errors import one_line

#: Backends that need a CUDA device; ``native`` and ``_native_math`` run anywhere.
CUDA_ATTENTION_BACKENDS = frozenset(
    {"_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage"}
)


class OptionError(Exception):
    """An option cannot be applied to this model or machine; the message names the variable."""


def denoiser(pipeline: Any) -> Any:
    """The pipeline's transformer or UNet: the model every denoising step runs."""
    model = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    if model is None:
        raise OptionError(f"{type(pipeline).__name__} has neither a transformer nor a UNet")
    return model


def check_options(settings: Settings, device: torch.device) -> None:
    """What can be checked before loading anything: options that need a CUDA device.

    Raises:
        OptionError: naming the variable.
    """
    backend = settings.attention_backend
    if backend in CUDA_ATTENTION_BACKENDS and device.type != "cuda":
        raise OptionError(f"IMGEDIT_ATTENTION_BACKEND: {backend!r} needs a CUDA device, and this one is {device}")


def apply_options(pipeline: Any, settings: Settings, device: torch.device) -> list[str]:
    """Apply every option ``settings`` turns on; return a short description of each, for the log.

    Compilation comes last, so that it sees the attention backend and cache hooks it will trace.

    Raises:
        OptionError: an option does not fit the model or the device.
    """
    check_options(settings, device)
    applied = []
    if settings.attention_backend is not None:
        _set_attention_backend(pipeline, settings.attention_backend)
        applied.append(f"attention={settings.attention_backend}")
    if settings.cache != "none":
        _enable_cache(pipeline, settings)
        applied.append(f"cache={settings.cache}")
    for enabled, variable, method in (
        (settings.vae_tiling, "IMGEDIT_VAE_TILING", "enable_tiling"),
        (settings.vae_slicing, "IMGEDIT_VAE_SLICING", "enable_slicing"),
    ):
        if enabled:
            vae = getattr(pipeline, "vae", None)
            if not hasattr(vae, method):
                raise OptionError(f"{variable}: the VAE of {type(pipeline).__name__} does not support it")
            getattr(vae, method)()
            applied.append(variable.removeprefix("IMGEDIT_").lower())
    if settings.compile:
        applied.append(_compile(pipeline))
    return applied


def _set_attention_backend(pipeline: Any, backend: str) -> None:
    model = denoiser(pipeline)
    if not hasattr(model, "set_attention_backend"):
        raise OptionError(f"IMGEDIT_ATTENTION_BACKEND: {type(model).__name__} cannot switch attention backends")
    try:
        model.set_attention_backend(backend)
    except (RuntimeError, ValueError, ImportError) as exc:  # a kernel package is missing or too old
        raise OptionError(f"IMGEDIT_ATTENTION_BACKEND: {backend!r} is not usable here: {one_line(exc)}") from None


def _enable_cache(pipeline: Any, settings: Settings) -> None:
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    model = denoiser(pipeline)
    if not hasattr(model, "enable_cache"):
        raise OptionError(f"IMGEDIT_CACHE: {type(model).__name__} does not support diffusers' caching")
    if settings.cache == "first_block":
        config: Any = FirstBlockCacheConfig(threshold=settings.cache_threshold)
    else:
        config = TaylorSeerCacheConfig(cache_interval=settings.cache_interval)
    try:
        model.enable_cache(config)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise OptionError(f"IMGEDIT_CACHE: {settings.cache!r} does not work with this model: {one_line(exc)}") from None


def _compile(pipeline: Any) -> str:
    """Compile the denoiser's repeated blocks (regional compilation), or the whole denoiser when it has none.

    Regional compilation compiles one block and reuses it for all of them: the
    same speed as compiling the whole model, in a fraction of the time.
    """
    model = denoiser(pipeline)
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(fullgraph=True)
        return "compile=regional"
    model.compile()
    return "compile=whole"
