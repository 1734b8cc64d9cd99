"""Load a request's inputs: fetch URLs, then decode the images and the mask.

URLs are fetched concurrently; decoding runs in a worker thread so the event
loop keeps serving while large images are decompressed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread
from PIL import Image

from imgedit.errors import RequestError
from imgedit.media.fetch import Fetcher
from imgedit.media.images import InputImage, decode_image
from imgedit.media.masking import decode_mask


@dataclass(frozen=True)
class ImageSource:
    """One input image before loading: uploaded ``data`` or a ``url`` to fetch.

    ``param`` names it in errors: ``image[0]``, ``url[1]``...
    """

    param: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class Inputs:
    """The decoded inputs of a request.

    Attributes:
        images: in request order (uploads first, then URLs).
        mask_region: the mask's edit region (``L``, 255 where to edit) at the
            first image's size, or None without a mask.
    """

    images: list[InputImage]
    mask_region: Image.Image | None

    @property
    def first(self) -> InputImage:
        """The first image: it sets ``size=auto``, the mask's size and the output's alpha."""
        return self.images[0]


async def load_inputs(
    sources: Sequence[ImageSource], mask: ImageSource | None, fetcher: Fetcher, max_pixels: int
) -> Inputs:
    """Fetch and decode the images of ``sources`` (at least one) and the ``mask``, if any.

    Raises:
        RequestError: naming the first source that cannot be fetched or decoded, or the mask.
    """
    payloads = await _fetch_all([*sources, *([mask] if mask is not None else [])], fetcher)
    image_payloads, mask_payload = payloads[: len(sources)], payloads[len(sources) :]

    def decode_all() -> Inputs:
        images = [
            decode_image(payload, source.param, max_pixels)
            for payload, source in zip(image_payloads, sources, strict=True)
        ]
        region = decode_mask(mask_payload[0], images[0].size, max_pixels) if mask_payload else None
        return Inputs(images, region)

    return await anyio.to_thread.run_sync(decode_all)


async def _fetch_all(sources: Sequence[ImageSource], fetcher: Fetcher) -> list[bytes]:
    payloads: list[bytes] = [source.data or b"" for source in sources]

    async def fetch(index: int, source: ImageSource) -> None:
        assert source.url is not None
        payloads[index] = await fetcher.read(source.url, source.param)

    try:
        async with anyio.create_task_group() as group:
            for index, source in enumerate(sources):
                if source.url is not None:
                    group.start_soon(fetch, index, source)
    except ExceptionGroup as failures:
        # The first failed fetch cancels the others; report it alone, a refusal before any fault of the
        # server's, and never as a group (the handler answers a RequestError, not a group holding one).
        refusals = failures.subgroup(RequestError)
        raise _first_leaf(refusals if refusals is not None else failures) from None
    return payloads


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
