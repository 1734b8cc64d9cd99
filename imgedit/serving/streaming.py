"""Answering an edit as server-sent events: previews while the run goes, then one event per image."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from PIL import Image
from starlette.responses import Response, StreamingResponse

from imgedit.api.errors import ApiError, http_error, internal_error
from imgedit.api.responses import (
    SEEDS_HEADER,
    StreamInfo,
    completed_event,
    error_event,
    partial_image_event,
    reported_quality,
)
from imgedit.errors import RequestError
from imgedit.logs import add_to_access_line, get_logger
from imgedit.serving.answers import Prepared, encode

if TYPE_CHECKING:
    from imgedit.serving.handler import EditHandler

log = get_logger(__name__)


def stream_answer(handler: EditHandler, prepared: Prepared, deadline: float) -> Response:
    """Answer with server-sent events: previews while the run goes, then one event per image."""
    request = prepared.request
    previews: asyncio.Queue[tuple[int, list[Image.Image]]] = asyncio.Queue()
    job = handler.submit(prepared, request.partial_images, lambda index, images: previews.put_nowait((index, images)))
    info = StreamInfo(
        created_at=int(time.time()),
        size=prepared.plan.size,
        quality=reported_quality(request.options.quality),
        background=prepared.encoding.background,
        output_format=request.output_format,
    )
    usage = prepared.usage()

    async def events() -> AsyncIterator[bytes]:
        result = asyncio.ensure_future(handler.run(job, deadline))
        try:
            async for index, pictures in _until(previews, result):
                for offset, encoded in enumerate(await encode(prepared, pictures)):
                    yield partial_image_event(encoded, index * len(pictures) + offset, info)
            for encoded in await encode(prepared, result.result()):
                yield completed_event(encoded, info, usage)
        except RequestError as error:
            yield error_event(http_error(error).body())
        except ApiError as error:
            yield error_event(error.body())
        except Exception:
            log.exception("streamed edit failed")
            yield error_event(internal_error().body())
        finally:
            if not result.done():  # the client went away (Starlette cancels this generator)
                log.info("client disconnected from the stream; stopping its edit")
                add_to_access_line(stream="disconnected")
                job.cancel("disconnect")
                result.cancel()

    headers = {SEEDS_HEADER: ",".join(str(seed) for seed in prepared.spec.seeds), "Cache-Control": "no-cache"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _until(
    previews: asyncio.Queue[tuple[int, list[Image.Image]]], result: asyncio.Future[list[Image.Image]]
) -> AsyncIterator[tuple[int, list[Image.Image]]]:
    """Previews as they come, until ``result`` is done (previews sent before it are still given)."""
    while True:
        getter = asyncio.ensure_future(previews.get())
        waiting: set[asyncio.Future[Any]] = {getter, result}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():  # also when the stream is cancelled while waiting
                getter.cancel()
        if getter in done:
            yield getter.result()
            continue
        while not previews.empty():
            yield previews.get_nowait()
        return
