"""Load the request's input images: fetch URLs, then decode everything.

URLs are fetched concurrently; decoding runs in a worker thread so the event
loop keeps serving while large images are decompressed.
"""

from __future__ import annotations

import anyio
import anyio.to_thread

from imgedit.errors import ApiError
from imgedit.fetch import Fetcher
from imgedit.images import InputImage, decode_image
from imgedit.request import ImageSource


async def load_images(sources: tuple[ImageSource, ...], fetcher: Fetcher, max_pixels: int) -> list[InputImage]:
    """Decode ``sources`` in order (uploads first, then URLs, as the request listed them).

    Raises:
        ApiError: 400 naming the first source that cannot be fetched or decoded.
    """
    payloads: list[bytes | None] = [source.data for source in sources]

    async def fetch(index: int, source: ImageSource) -> None:
        assert source.url is not None
        payloads[index] = await fetcher.read(source.url, source.param)

    try:
        async with anyio.create_task_group() as group:
            for index, source in enumerate(sources):
                if source.url is not None:
                    group.start_soon(fetch, index, source)
    except ExceptionGroup as failures:
        # The first failed fetch cancels the others; report it alone.
        api_errors = failures.subgroup(ApiError)
        if api_errors is None:
            raise
        raise _first_leaf(api_errors) from None

    def decode_all() -> list[InputImage]:
        return [
            decode_image(payload or b"", source.param, max_pixels)
            for payload, source in zip(payloads, sources, strict=True)
        ]

    return await anyio.to_thread.run_sync(decode_all)


def _first_leaf(group: BaseExceptionGroup[ApiError]) -> ApiError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
