"""The limits the targets hand the parsers: the server's defaults, or small ones the input picks.

The defaults come from :class:`~imgedit.config.Settings`' field defaults (never
from the environment, so a run does not depend on the shell). The body limits
repeat :func:`imgedit.serving.options.multipart_limits`, which cannot be imported
here: its module pulls in PyTorch, seconds per worker start.
``tests/test_fuzz.py`` checks that the two agree.
"""

from __future__ import annotations

import math
from typing import Any

from imgedit.api.multipart import MultipartLimits
from imgedit.api.parse import IMAGE_FIELDS, MASK_FIELD, URL_FIELDS, RequestLimits
from imgedit.config import Settings
from imgedit.edit import HARD_MAX_IMAGES
from imgedit.media.fetch import FetchPolicy
from imgedit.media.sizing import SizeLimits

#: What a served model is called in the fuzzed requests, and the LoRAs "loaded".
MODEL_NAMES = ("imgedit-fuzz", "Qwen/Qwen-Image-Edit-2511")
LORA_NAMES = ("style", "ink-sketch", "v2.detail_x")
#: Room for ``data:image/...;base64,`` around a base64 payload (as in imgedit.serving.options).
_DATA_URL_OVERHEAD = 1024


def default(name: str) -> Any:
    """The default of setting ``name`` (``IMGEDIT_`` + its upper case)."""
    return Settings.model_fields[name].default


def body_limits(
    *, max_body_bytes: int | None = None, max_parts: int | None = None, field_bytes: int | None = None
) -> MultipartLimits:
    """The server's body limits; each argument given replaces the default it names."""
    image_bytes: int = default("max_image_bytes")
    field_cap: int = field_bytes if field_bytes is not None else default("max_field_bytes")
    data_url_bytes = math.ceil(image_bytes / 3) * 4 + _DATA_URL_OVERHEAD

    def part_bytes(name: str) -> int:
        if name in IMAGE_FIELDS or name == MASK_FIELD:
            return image_bytes if field_bytes is None else field_cap
        if name in URL_FIELDS:
            return max(field_cap, data_url_bytes) if field_bytes is None else field_cap
        return field_cap

    return MultipartLimits(
        max_body_bytes=max_body_bytes if max_body_bytes is not None else default("max_body_bytes"),
        max_parts=max_parts if max_parts is not None else default("max_parts"),
        part_bytes=part_bytes,
        idle_seconds=default("body_idle_timeout"),
        total_seconds=default("body_timeout"),
    )


def size_limits() -> SizeLimits:
    """``IMGEDIT_MAX_SIDE`` and ``IMGEDIT_MAX_OUTPUT_PIXELS`` at their defaults."""
    return SizeLimits(max_side=default("max_side"), max_pixels=default("max_output_pixels"))


def request_limits(
    *, max_images: int = 4, max_prompt_chars: int | None = None, size: SizeLimits | None = None
) -> RequestLimits:
    """What the handler builds for a Qwen-Image-Edit-Plus server (4 images) with LoRAs loaded."""
    return RequestLimits(
        max_images=max(1, min(max_images, HARD_MAX_IMAGES)),
        max_prompt_chars=max_prompt_chars if max_prompt_chars is not None else default("max_prompt_chars"),
        size=size if size is not None else size_limits(),
        model_names=MODEL_NAMES,
        lora_names=lambda: LORA_NAMES,
    )


def fetch_policy(*, max_bytes: int | None = None) -> FetchPolicy:
    """URL fetching off (nothing may ever reach the network); data: URLs still read."""
    return FetchPolicy(enabled=False, max_bytes=max_bytes if max_bytes is not None else default("url_max_bytes"))
