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

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from imgedit.errors import one_line
from imgedit.model.pipeline import Pipeline, denoiser

if TYPE_CHECKING:
    from diffusers.models.modeling_utils import ModelMixin

#: Backends that need a CUDA device; ``native`` and ``_native_math`` run anywhere.
CUDA_ATTENTION_BACKENDS = frozenset(
    {"_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage"}
)


class OptionError(Exception):
    """An option cannot be applied to this model or machine; the message names the variable."""


#: ``IMGEDIT_CACHE``'s values.
CacheKind = Literal["none", "first_block", "taylorseer"]


@dataclass(frozen=True, kw_only=True)
class StepCache:
    """A cache of computation across denoising steps, as one call runs it.

    Attributes:
        kind: ``none``, ``first_block`` (FirstBlockCache) or ``taylorseer``.
        threshold: FirstBlockCache's threshold.
        interval: TaylorSeer's steps between full computations.
    """

    kind: CacheKind = "none"
    threshold: float = 0.05
    interval: int = 5


@dataclass(frozen=True, kw_only=True)
class AccelerationOptions:
    """What to turn on; every field is the ``IMGEDIT_`` setting of the same name.

    Attributes:
        attention_backend: diffusers' attention backend (None: PyTorch's choice).
        cache: ``none``, ``first_block`` (FirstBlockCache) or ``taylorseer``.
        cache_threshold: FirstBlockCache's threshold.
        cache_interval: TaylorSeer's steps between full computations.
        vae_tiling: decode in tiles.
        vae_slicing: decode a batch one image at a time.
        compile: ``torch.compile`` the denoiser's repeated blocks.
    """

    attention_backend: str | None = None
    cache: CacheKind = "none"
    cache_threshold: float = 0.05
    cache_interval: int = 5
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False

    @property
    def step_cache(self) -> StepCache:
        """The step cache these options turn on (kind ``none`` when they do not)."""
        return StepCache(kind=self.cache, threshold=self.cache_threshold, interval=self.cache_interval)


def check_options(options: AccelerationOptions, device: torch.device) -> None:
    """What can be checked before loading anything: options that need a CUDA device.

    Raises:
        OptionError: naming the variable.
    """
    backend = options.attention_backend
    if backend in CUDA_ATTENTION_BACKENDS and device.type != "cuda":
        raise OptionError(f"IMGEDIT_ATTENTION_BACKEND: {backend!r} needs a CUDA device, and this one is {device}")


def apply_options(pipeline: Pipeline, options: AccelerationOptions, device: torch.device) -> list[str]:
    """Apply every option turned on; return a short description of each, for the log.

    Compilation comes last, so that it sees the attention backend and cache hooks it will trace.

    Raises:
        OptionError: an option does not fit the model or the device.
    """
    check_options(options, device)
    applied = []
    if options.attention_backend is not None:
        _set_attention_backend(pipeline, options.attention_backend)
        applied.append(f"attention={options.attention_backend}")
    if options.cache != "none":
        try:
            use_step_cache(pipeline, options.step_cache)
        except ValueError as error:
            raise OptionError(f"IMGEDIT_CACHE: {error}") from None
        applied.append(f"cache={options.cache}")
    for enabled, variable, method in (
        (options.vae_tiling, "IMGEDIT_VAE_TILING", "enable_tiling"),
        (options.vae_slicing, "IMGEDIT_VAE_SLICING", "enable_slicing"),
    ):
        if enabled:
            vae = getattr(pipeline, "vae", None)
            if not hasattr(vae, method):
                raise OptionError(f"{variable}: the VAE of {type(pipeline).__name__} does not support it")
            getattr(vae, method)()
            applied.append(variable.removeprefix("IMGEDIT_").lower())
    if options.compile:
        applied.append(_compile(pipeline))
    return applied


def _denoiser(pipeline: Pipeline, variable: str) -> ModelMixin:
    try:
        return denoiser(pipeline)
    except ValueError as error:
        raise OptionError(f"{variable}: {error}") from None


def _set_attention_backend(pipeline: Pipeline, backend: str) -> None:
    model = _denoiser(pipeline, "IMGEDIT_ATTENTION_BACKEND")
    if not hasattr(model, "set_attention_backend"):
        raise OptionError(f"IMGEDIT_ATTENTION_BACKEND: {type(model).__name__} cannot switch attention backends")
    try:
        model.set_attention_backend(backend)
    except (RuntimeError, ValueError, ImportError) as exc:  # a kernel package is missing or too old
        raise OptionError(f"IMGEDIT_ATTENTION_BACKEND: {backend!r} is not usable here: {one_line(exc)}") from None


#: The step cache each denoiser runs with now (absent: none).
_caches: weakref.WeakKeyDictionary[torch.nn.Module, StepCache] = weakref.WeakKeyDictionary()


def use_step_cache(pipeline: Pipeline, cache: StepCache) -> None:
    """Have the pipeline's denoiser run with ``cache`` (kind ``none``: without one), from a clean state.

    The hooks change only if ``cache`` differs from the denoiser's; otherwise their state is cleared.

    A server with speed tiers (``IMGEDIT_PRESETS``) may switch it between two calls;
    diffusers' hooks are removed and registered again, which costs little.

    Raises:
        ValueError: the denoiser cannot run ``cache``; the message says why.
    """
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    try:
        model = denoiser(pipeline)
    except ValueError:
        if cache.kind == "none":
            return
        raise
    if _caches.get(model, StepCache()) == cache:
        if cache.kind != "none":
            # diffusers clears the cache's state only when a call ends well: one that was stopped (a client gone,
            # out of memory) would leave the next one to start from its steps.
            model._reset_stateful_cache()
        return
    if not hasattr(model, "enable_cache"):
        raise ValueError(f"{type(model).__name__} does not support diffusers' caching")
    if model.is_cache_enabled:
        model.disable_cache()
    _caches.pop(model, None)
    if cache.kind == "none":
        return
    if cache.kind == "first_block":
        config: Any = FirstBlockCacheConfig(threshold=cache.threshold)
    else:
        config = TaylorSeerCacheConfig(cache_interval=cache.interval)
    try:
        model.enable_cache(config)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(f"{cache.kind!r} does not work with this model: {one_line(exc)}") from None
    _caches[model] = cache


def _compile(pipeline: Pipeline) -> str:
    """Compile the denoiser's repeated blocks (regional compilation), or the whole denoiser when it has none.

    Regional compilation compiles one block and reuses it for all of them: the
    same speed as compiling the whole model, in a fraction of the time.
    """
    model = _denoiser(pipeline, "IMGEDIT_COMPILE")
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(fullgraph=True)
        return "compile=regional"
    model.compile()
    return "compile=whole"
