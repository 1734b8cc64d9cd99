"""The ``size`` field: parsing it, and choosing the size actually produced.

Models only produce sizes that are a multiple of some number (16 for Qwen), so
the requested size is rounded to the nearest such size, kept inside the limits,
and the response reports what was really made.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from imgedit.errors import invalid

MIN_SIDE = 64
_SIZE = re.compile(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*")


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class SizeLimits:
    """``max_side`` bounds each side; ``max_pixels`` bounds width x height."""

    max_side: int
    max_pixels: int


def parse_size(value: str, limits: SizeLimits) -> Size | None:
    """Parse ``"auto"`` (returns None) or ``"WxH"``.

    Raises:
        RequestError: with ``param="size"`` for a malformed or out-of-range size.
    """
    if value.strip().lower() == "auto":
        return None
    match = _SIZE.fullmatch(value)
    if match is None:
        raise invalid(
            "size",
            f"Invalid size format: {value!r}. Expected 'auto' or 'WIDTHxHEIGHT' (e.g. '1024x1024').",
        )
    size = Size(int(match[1]), int(match[2]))
    for side in (size.width, size.height):
        if not MIN_SIDE <= side <= limits.max_side:
            raise invalid(
                "size",
                f"Invalid size {size}: each side must be between {MIN_SIDE} and {limits.max_side} pixels.",
            )
    if size.pixels > limits.max_pixels:
        raise invalid(
            "size",
            f"Requested size {size} has {size.pixels} pixels, more than the maximum of {limits.max_pixels}.",
        )
    return size


def output_size(
    requested: Size | None, first_input: Size, multiple: int, limits: SizeLimits, auto_pixels: int | None = None
) -> Size:
    """The size to generate.

    Args:
        requested: the parsed ``size`` field; None means ``auto``: an area of
            ``auto_pixels`` at the first input image's aspect ratio, or the first
            input's own size when ``auto_pixels`` is None; either is scaled up
            until its shorter side reaches ``MIN_SIDE`` and down until it is
            within the limits, the aspect kept (the limits win when both cannot hold).
        first_input: size of the first input image.
        multiple: the model's size multiple; both sides are rounded to it.
        limits: the same limits :func:`parse_size` enforced.
        auto_pixels: the area ``auto`` aims at (the model's native area).

    Returns:
        A size whose sides are multiples of ``multiple``, at least ``MIN_SIDE``
        (rounded up to the multiple) and within ``limits``.
    """
    smallest = math.ceil(MIN_SIDE / multiple) * multiple
    if requested is None:
        width, height = float(first_input.width), float(first_input.height)
        if auto_pixels is not None:
            to_area = math.sqrt(auto_pixels / first_input.pixels)
            width, height = width * to_area, height * to_area
        # Up to the smallest side first, both sides alike, so that a panorama keeps its aspect;
        # then down within the limits, which win where the two cannot both hold.
        scale = max(1.0, smallest / min(width, height))
        scale = min(scale, limits.max_side / max(width, height), math.sqrt(limits.max_pixels / (width * height)))
        width, height = width * scale, height * scale
    else:
        width, height = float(requested.width), float(requested.height)

    def snap(side: float, rounding: str) -> int:
        steps = math.floor(side / multiple + (0.5 if rounding == "nearest" else 0.0))
        return max(smallest, steps * multiple)

    size = Size(snap(width, "nearest"), snap(height, "nearest"))
    if not _within(size, limits):
        size = Size(snap(width, "floor"), snap(height, "floor"))
    if not _within(size, limits):  # the shorter side was raised to the smallest: the longer one gives way
        shorter = min(size.width, size.height)
        longer = max(smallest, min(limits.max_side, limits.max_pixels // shorter) // multiple * multiple)
        size = Size(longer, shorter) if size.width >= size.height else Size(shorter, longer)
    return size


def _within(size: Size, limits: SizeLimits) -> bool:
    return size.pixels <= limits.max_pixels and max(size.width, size.height) <= limits.max_side
