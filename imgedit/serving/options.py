"""The small option objects every layer below serving is handed, built here from the settings.

Only the serving layer reads :class:`~imgedit.config.Settings`; the model,
weights, ranks, media and API layers each take the few values they need, in
an object of their own. This module is the one place that maps settings onto them.
"""

from __future__ import annotations

import math

from imgedit.api.multipart import MultipartLimits
from imgedit.api.parse import IMAGE_FIELDS, MASK_FIELD, URL_FIELDS
from imgedit.config import Settings
from imgedit.media.fetch import FetchPolicy
from imgedit.model.acceleration import AccelerationOptions
from imgedit.model.spec import Defaults
from imgedit.ranks.plans import RankLayout
from imgedit.weights.options import LoadOptions, QuantizationOptions

#: Room for ``data:image/...;base64,`` around a base64 payload.
_DATA_URL_OVERHEAD = 1024


def rank_layout(settings: Settings) -> RankLayout:
    """``IMGEDIT_ULYSSES_DEGREE``, ``IMGEDIT_RING_DEGREE``, ``IMGEDIT_TP_DEGREE`` and ``IMGEDIT_CFG_PARALLEL``."""
    return RankLayout(
        ulysses=settings.ulysses_degree,
        ring=settings.ring_degree,
        tp=settings.tp_degree,
        cfg=2 if settings.cfg_parallel else 1,
    )


def acceleration_options(settings: Settings) -> AccelerationOptions:
    """The attention backend, caches, VAE tiling and slicing, and compilation."""
    return AccelerationOptions(
        attention_backend=settings.attention_backend,
        cache=settings.cache,
        cache_threshold=settings.cache_threshold,
        cache_interval=settings.cache_interval,
        vae_tiling=settings.vae_tiling,
        vae_slicing=settings.vae_slicing,
        compile=settings.compile,
    )


def quantization_options(settings: Settings) -> QuantizationOptions:
    """``IMGEDIT_QUANTIZE``, ``IMGEDIT_QUANTIZE_COMPONENTS`` and ``IMGEDIT_TRANSFORMER``."""
    return QuantizationOptions(settings.quantize, settings.quantized_component_names, settings.transformer)


def load_options(settings: Settings) -> LoadOptions:
    """Where the model is, how it is placed and quantized, and the LoRAs it must take."""
    return LoadOptions(
        model=settings.model,
        revision=settings.model_revision,
        device=settings.device,
        dtype=settings.dtype,
        device_map=settings.device_map,
        offload=settings.offload,
        quantization=quantization_options(settings),
        memory_check=settings.memory_check,
        memory_budget_gib=settings.memory_budget_gib,
        loras=settings.lora,
        fuse_loras=settings.lora_fuse,
        chosen_loras=bool(settings.lora_adapters),
        ranks=rank_layout(settings),
    )


def default_overrides(settings: Settings) -> Defaults:
    """The operator's ``IMGEDIT_DEFAULT_*`` overrides of a family's defaults (the steps are completed at load)."""
    return Defaults(
        steps=settings.default_steps,
        guidance_scale=settings.default_guidance_scale,
        true_cfg_scale=settings.default_true_cfg_scale,
    )


def fetch_policy(settings: Settings) -> FetchPolicy:
    """What URL inputs may be fetched, and within which limits."""
    return FetchPolicy(
        enabled=settings.url_fetch,
        allow_private=settings.url_allow_private,
        timeout=settings.url_timeout,
        max_bytes=settings.url_max_bytes,
        max_redirects=settings.url_max_redirects,
        allowed_hosts=settings.allowed_hosts,
    )


def multipart_limits(settings: Settings) -> MultipartLimits:
    """Body limits, and per-part caps: image bytes for files, a base64 image for URLs, the field cap otherwise."""
    data_url_bytes = math.ceil(settings.max_image_bytes / 3) * 4 + _DATA_URL_OVERHEAD

    def part_bytes(name: str) -> int:
        if name in IMAGE_FIELDS or name == MASK_FIELD:
            return settings.max_image_bytes
        if name in URL_FIELDS:
            return max(settings.max_field_bytes, data_url_bytes)
        return settings.max_field_bytes

    return MultipartLimits(
        max_body_bytes=settings.max_body_bytes,
        max_parts=settings.max_parts,
        part_bytes=part_bytes,
        idle_seconds=settings.body_idle_timeout,
        total_seconds=settings.body_timeout,
    )
