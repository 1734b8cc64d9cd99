"""What an edit's answer is made of: the prepared request, its encoded images, and the body that carries them.

A body carries each image as base64, or as a link to the image store
(``response_format=url``). Links are made when an answer is sent, so a job's
links are fresh whenever it is read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
from PIL import Image

from imgedit.api.parse import EditRequest
from imgedit.api.responses import ImageItem, ImagesResponse, Usage, reported_quality
from imgedit.edit import Loras
from imgedit.media.encode import EncodeOptions, OutputFormat, encode_image
from imgedit.media.inputs import Inputs
from imgedit.media.masking import fit, keep_outside
from imgedit.model.call import EditPlan, Tokens
from imgedit.model.spec import EditSpec
from imgedit.serving.storage import Storage


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A validated request with its inputs loaded and its plan made: ready to run.

    Attributes:
        tokens: the tokens behind one output image.
        loras: the LoRAs the request runs with.
    """

    request: EditRequest
    inputs: Inputs
    spec: EditSpec
    plan: EditPlan
    encoding: EncodeOptions
    tokens: Tokens
    loras: Loras

    def usage(self, images: int = 1) -> Usage:
        """OpenAI's ``usage`` of ``images`` output images."""
        tokens = self.tokens.times(images)
        return Usage.of(tokens.text_tokens, tokens.image_tokens, tokens.output_tokens)

    def finish(self, output: Image.Image) -> bytes:
        """Bring a generated (or preview) image to the output size, keep the original outside the mask, encode."""
        image = fit(output, self.plan.size)
        if self.inputs.mask_region is not None:
            image = keep_outside(image, self.inputs.first.rgb, self.inputs.mask_region)
        return encode_image(image, self.inputs.first.alpha, self.encoding)


async def encode(prepared: Prepared, images: Sequence[Image.Image]) -> list[bytes]:
    """Finish and encode ``images`` off the event loop."""

    def encode_all() -> list[bytes]:
        return [prepared.finish(image) for image in images]

    return await anyio.to_thread.run_sync(encode_all)


def images_body(prepared: Prepared, items: list[ImageItem], images: int | None = None) -> ImagesResponse:
    """OpenAI's ``ImagesResponse`` of these images; ``images`` counts them when ``items`` is left empty (a job's
    links are made when it is read)."""
    return ImagesResponse(
        created=int(time.time()),
        data=items,
        output_format=prepared.request.output_format,
        size=str(prepared.plan.size),
        background=prepared.encoding.background,
        quality=reported_quality(prepared.request.options.quality),
        usage=prepared.usage(len(items) if images is None else images),
    )


async def store_images(
    storage: Storage, encoded: list[bytes], output_format: OutputFormat, keep_until: int
) -> list[str]:
    """Put the images into the store until ``keep_until``; their names, in order."""

    def put_all() -> list[str]:
        return [storage.images.put(image, output_format, keep_until) for image in encoded]

    return await anyio.to_thread.run_sync(put_all)


async def link_items(storage: Storage, names: list[str], request_base: str, keep_until: int) -> list[ImageItem]:
    """A link to each stored image, valid for the link lifetime but never past ``keep_until``."""
    expires = min(int(time.time()) + storage.url_ttl, keep_until)
    base = storage.base_url(request_base)

    def sign_all() -> list[ImageItem]:
        return [ImageItem(url=storage.images.link(name, expires, base)) for name in names]

    return await anyio.to_thread.run_sync(sign_all)
