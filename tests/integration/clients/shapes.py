"""What the client tests share: a mask, and a decoded picture from a b64_json answer."""

from __future__ import annotations

import base64
import io

from PIL import Image


def left_half_mask(width: int = 64, height: int = 64) -> bytes:
    """OpenAI's mask: opaque, with the left half fully transparent (edit there)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(b64_json: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64_json)))
    image.load()
    return image


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()
