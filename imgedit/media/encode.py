"""Encode generated images as PNG, JPEG or WebP, with the requested background.

``background`` decides the alpha channel of the output: ``transparent`` copies
the first input image's alpha (resized to the output), ``opaque`` writes no
alpha, and ``auto`` keeps alpha only when the first input had transparency.
PNG is always lossless; ``output_compression`` is the JPEG/WebP quality.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from imgedit.media.png import encode_png, supports

OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["auto", "transparent", "opaque"]
ResolvedBackground = Literal["transparent", "opaque"]


@dataclass(frozen=True)
class EncodeOptions:
    """How to write every output image of one request."""

    output_format: OutputFormat
    quality: int
    background: ResolvedBackground
    png_compress_level: int = 1


def resolve_background(
    requested: Background, first_input_alpha: Image.Image | None, output_format: OutputFormat
) -> ResolvedBackground:
    """The background actually produced: ``auto`` is transparent only when the
    first input had transparency and the format can carry it (JPEG cannot)."""
    if requested == "auto":
        return "transparent" if first_input_alpha is not None and output_format != "jpeg" else "opaque"
    return requested


def encode_image(image: Image.Image, alpha: Image.Image | None, options: EncodeOptions) -> bytes:
    """Encode one output image.

    Args:
        image: the generated ``RGB`` image.
        alpha: the first input's ``L`` alpha channel, used when the background
            is transparent (None means fully opaque).
        options: format, quality and background.
    """
    if options.background == "transparent":
        mask = alpha.resize(image.size, Image.Resampling.BILINEAR) if alpha is not None else None
        image = image.convert("RGBA")
        image.putalpha(mask if mask is not None else 255)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if options.output_format == "png":
        if options.png_compress_level == 1 and supports(image):
            return encode_png(image, level=1)  # the fast default; see imgedit/media/png.py
        image.save(buffer, format="PNG", compress_level=options.png_compress_level)
    elif options.output_format == "jpeg":
        image.save(buffer, format="JPEG", quality=options.quality)
    else:
        image.save(buffer, format="WEBP", quality=options.quality)
    return buffer.getvalue()
