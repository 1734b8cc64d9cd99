"""The OpenAI ``mask``: reading it, and keeping the original outside it.

A mask is an image the size of the first input whose fully transparent pixels
(alpha 0) mark where to edit. It is read into an edit region (``L``, 255 where
to edit), the white-means-repaint convention of diffusers' inpainting
pipelines. Whatever pipeline ran, the output keeps the original pixels outside
the region, blended across a feathered edge, so ``mask`` means the same on
every model.
"""

from __future__ import annotations

from PIL import Image, ImageFilter

from imgedit.errors import invalid
from imgedit.media.images import has_transparency, open_image
from imgedit.media.sizing import Size

PARAM = "mask"
#: Width of the blended edge, as a share of the output's shorter side.
FEATHER_SHARE = 0.01


def decode_mask(data: bytes, first_image: Size, max_pixels: int) -> Image.Image:
    """The edit region of ``data``: mode ``L``, 255 where the mask is fully transparent.

    Raises:
        RequestError: with ``param="mask"`` when the mask cannot be decoded, has
            no alpha channel, differs in size from the first image, or marks
            nothing to edit.
    """

    def edit_region(image: Image.Image) -> Image.Image:
        if not has_transparency(image):
            raise invalid(PARAM, "The mask has no alpha channel; transparent pixels mark where to edit.")
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.point(lambda value: 255 if value == 0 else 0)

    region = open_image(data, PARAM, max_pixels, edit_region)
    if Size(*region.size) != first_image:
        raise invalid(PARAM, f"The mask is {Size(*region.size)} but the first image is {first_image}; they must match.")
    if region.getextrema()[1] == 0:
        raise invalid(PARAM, "The mask has no fully transparent pixels, so there is nothing to edit.")
    return region


def fit(image: Image.Image, size: Size) -> Image.Image:
    """``image`` at exactly ``size`` (pipelines that choose their own size are resized)."""
    if image.size == (size.width, size.height):
        return image
    return image.resize((size.width, size.height), Image.Resampling.LANCZOS)


def keep_outside(edited: Image.Image, original: Image.Image, region: Image.Image) -> Image.Image:
    """``edited`` inside ``region``, ``original`` outside it, blended over a feathered edge.

    Args:
        edited: the generated image (its size is the output size).
        original: the first input image, ``RGB``, any size.
        region: the edit region at the first input's size.
    """
    size = edited.size
    softened = region.resize(size, Image.Resampling.BILINEAR)
    radius = max(1.0, min(size) * FEATHER_SHARE)
    softened = softened.filter(ImageFilter.GaussianBlur(radius))
    return Image.composite(edited.convert("RGB"), original.resize(size, Image.Resampling.LANCZOS), softened)
