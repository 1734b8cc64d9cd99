"""``size``: :func:`imgedit.media.sizing.parse_size`, then :func:`~imgedit.media.sizing.output_size`.

Input: the ``size`` field's text, a newline, then bytes that pick the rest:
size limits a server may be configured with (``IMGEDIT_MAX_SIDE`` 64 to 16384,
``IMGEDIT_MAX_OUTPUT_PIXELS`` at least 64x64), the first input image's size,
the model's size multiple (a power of two up to 64, as the families' VAEs make
them) and the area ``auto`` aims at (or none, ``IMGEDIT_AUTO_SIZE=input``).

Correct outcomes: parse_size refuses with a RequestError naming ``size``, or
gives None for ``auto`` or a size within the limits. output_size keeps what its
docstring promises for every size parse_size lets through (and for ``auto``
after a refusal): both sides multiples
of the multiple, at least 64 rounded up to it, and within the limits.
"""

from __future__ import annotations

import math

import atheris

from fuzz.outcome import expect, refused
from fuzz.values import Provider
from imgedit.media.sizing import MIN_SIDE, Size, SizeLimits, output_size, parse_size

INSTRUMENT = ("imgedit", "fuzz")
DRIVES = ("imgedit.media.sizing.parse_size", "imgedit.media.sizing.output_size")
MULTIPLES = [1, 2, 4, 8, 16, 32, 64]


def fuzz_one(data: bytes) -> None:
    written, _, rest = data.partition(b"\n")
    provider: Provider = atheris.FuzzedDataProvider(rest)
    side = provider.ConsumeIntInRange(64, 16_384)
    limits = SizeLimits(max_side=side, max_pixels=provider.ConsumeIntInRange(64 * 64, 2 * side * side))
    parsed = refused(lambda: (parse_size(written.decode("utf-8", "surrogateescape"), limits),))
    requested = parsed[0] if parsed is not None else None  # refused: the server never gets further; try auto
    if requested is not None:
        sides = (requested.width, requested.height)
        expect(all(MIN_SIDE <= value <= side for value in sides), "parse_size keeps each side in range", requested)
        expect(requested.pixels <= limits.max_pixels, "parse_size keeps to max_pixels", requested)
    first = Size(provider.ConsumeIntInRange(1, 1 << 16), provider.ConsumeIntInRange(1, 1 << 16))
    multiple = provider.PickValueInList(MULTIPLES)
    auto_pixels = provider.ConsumeIntInRange(64 * 64, 1 << 24) if provider.ConsumeBool() else None
    size = output_size(requested, first, multiple, limits, auto_pixels)
    smallest = math.ceil(MIN_SIDE / multiple) * multiple
    detail = (requested, first, multiple, limits, auto_pixels, size)
    expect(size.width % multiple == 0 and size.height % multiple == 0, "output_size gives multiples", detail)
    expect(min(size.width, size.height) >= smallest, "output_size gives at least MIN_SIDE", detail)
    expect(max(size.width, size.height) <= limits.max_side, "output_size keeps to max_side", detail)
    expect(size.pixels <= limits.max_pixels, "output_size keeps to max_pixels", detail)
