"""The request path of ``POST /v1/images/edits``, as one straight line.

read the body -> parse and validate -> load inputs -> plan for the model
family -> run on the engine -> finish (exact size, mask) -> encode -> respond
(one JSON body, or a stream of server-sent events). Each step lives in its own
module; this one strings them together, turns failures into OpenAI-shaped
errors, stops runs whose client hung up, and adds the model, ``n``, size and
steps to the request's access line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imgedit.api.body import multipart_limits, read_body
from imgedit.api.parse import EditRequest, RequestLimits, parse_edit_request
from imgedit.api.responses import (
    SEEDS_HEADER,
    StreamInfo,
    completed_event,
    error_event,
    error_response,
    images_response,
    partial_image_event,
    reported_quality,
)
from imgedit.api.routes import ModelCard
from imgedit.config import Settings
from imgedit.edit import LoraChoice
from imgedit.errors import ApiError, internal_error, invalid
from imgedit.logs import get_logger, note
from imgedit.media.encode import EncodeOptions, encode_image, resolve_background
from imgedit.media.fetch import Fetcher
from imgedit.media.inputs import Inputs, load_inputs
from imgedit.media.masking import fit, keep_outside
from imgedit.media.sizing import SizeLimits, output_size
from imgedit.model.call import EditPlan, Usage
from imgedit.model.families import FamilyAdapter
from imgedit.model.lora import LoraError
from imgedit.model.lora_registry import Adapters, LoraRegistry, UnknownAdapter
from imgedit.model.spec import EditSpec
from imgedit.serving.engine import Engine
from imgedit.serving.jobs import DeadlineExceeded, Draining, Job, OutOfMemory, PreviewSink, QueueFull, RunCancelled
from imgedit.serving.lora_admin import LoraAdmin

log = get_logger(__name__)

#: Seconds a client is asked to wait after the device ran out of memory.
OUT_OF_MEMORY_RETRY_SECONDS = 10
#: Seconds a client is asked to wait while the server shuts down (another replica may answer).
DRAINING_RETRY_SECONDS = 5


@dataclass(frozen=True)
class _Prepared:
    """A validated request with its inputs loaded and its plan made: ready to run."""

    request: EditRequest
    inputs: Inputs
    spec: EditSpec
    plan: EditPlan
    encoding: EncodeOptions
    #: The tokens behind one output image.
    usage: Usage
    #: The LoRA adapters the request runs with.
    adapters: Adapters

    def finish(self, output: Image.Image) -> bytes:
        """Bring a generated (or preview) image to the output size, keep the original outside the mask, encode."""
        image = fit(output, self.plan.size)
        if self.inputs.mask_region is not None:
            image = keep_outside(image, self.inputs.first.rgb, self.inputs.mask_region)
        return encode_image(image, self.inputs.first.alpha, self.encoding)


class EditHandler:
    """Serves edits for one loaded model.

    Args:
        settings: the server settings.
        model_id: the configured model (``IMGEDIT_MODEL``).
        adapter: the family adapter of the loaded pipeline.
        engine: runs the pipeline.
        fetcher: reads URL inputs.
    """

    def __init__(
        self,
        settings: Settings,
        model_id: str,
        adapter: FamilyAdapter,
        engine: Engine,
        fetcher: Fetcher,
        admin: LoraAdmin | None = None,
    ) -> None:
        self.settings = settings
        self.model_id = model_id
        self.adapter = adapter
        self.engine = engine
        self.fetcher = fetcher
        #: Loads and unloads LoRA adapters; its registry holds the ones requests may choose.
        self.admin = admin or LoraAdmin(
            LoraRegistry(adapter.loaded, max_loras=settings.max_loras), engine, settings.lora_dir
        )
        self.loras = self.admin.registry
        self.body_limits = multipart_limits(settings)
        #: The area ``size=auto`` aims at: the model's native one, or None for the first image's own size.
        self.auto_pixels = adapter.native_pixels if settings.auto_size == "native" else None
        self.limits = RequestLimits(
            max_images=adapter.max_images,
            max_prompt_chars=settings.max_prompt_chars,
            size=SizeLimits(max_side=settings.max_side, max_pixels=settings.max_output_pixels),
            model_names=tuple(dict.fromkeys((settings.served_name, model_id))),
            adapter_names=self.loras.names,
        )

    def model_cards(self, base: ModelCard) -> list[ModelCard]:
        """``GET /v1/models``: the served model, then every LoRA adapter as a model of its own on top of it."""
        return [base] + [
            ModelCard(id=entry.name, created=entry.created, root=base.id, parent=base.id)
            for entry in self.loras.registered()
        ]

    async def handle(self, connection: Request) -> Response:
        """Serve one request, reading its body from ``connection``, which is watched for a hang-up.

        Never raises: every failure becomes an OpenAI-shaped error response.
        """
        note(model=self.settings.served_name)
        try:
            body = await read_body(connection, self.body_limits)
            deadline = time.monotonic() + self.settings.request_timeout
            prepared = await self._prepare(parse_edit_request(body, self.limits))
            if prepared.request.stream:
                return self._stream(prepared, deadline)
            return await self._respond(prepared, deadline, connection)
        except ApiError as error:
            if error.status >= 500:
                log.warning("edit failed with %d: %s", error.status, error.message)
            return error_response(error)
        except Exception:
            log.exception("edit failed")
            return error_response(internal_error())

    async def _prepare(self, request: EditRequest) -> _Prepared:
        options = request.options
        note(n=options.n)
        log.debug(
            "prompt=%r negative_prompt=%r user=%r safety_identifier=%r",
            options.prompt,
            options.negative_prompt,
            request.user,
            request.safety_identifier,
        )
        inputs = await load_inputs(request.sources, request.mask, self.fetcher, self.settings.max_input_pixels)
        size = output_size(
            request.size, inputs.first.size, self.adapter.size_multiple, self.limits.size, self.auto_pixels
        )
        spec = self.adapter.resolve(options, inputs.images, size, inputs.mask_region)
        plan = self.adapter.plan(spec)
        note(size=size, steps=plan.steps, **({"mask": plan.mask_mode} if plan.mask_mode != "none" else {}))
        encoding = EncodeOptions(
            output_format=request.output_format,
            quality=request.output_compression,
            background=resolve_background(request.background, inputs.first.alpha, request.output_format),
            png_compress_level=self.settings.png_compress_level,
        )
        adapters = await self._adapters(request)
        if adapters:
            note(lora=",".join(f"{name}:{scale:g}" for name, scale in adapters))
        return _Prepared(request, inputs, spec, plan, encoding, self.adapter.usage(spec), adapters)

    async def _adapters(self, request: EditRequest) -> Adapters:
        """The LoRA adapters the request chose: ``model`` naming one, then ``lora``; paths are loaded first.

        Raises:
            ApiError: 400 naming ``lora`` (or ``model``) for an adapter that is not loaded or cannot be.
        """
        choices = list(request.lora)
        if request.model is not None and self.loras.has(request.model):
            choices.insert(0, LoraChoice(request.model))
        for index, choice in enumerate(choices):
            if choice.path is not None:
                name = choice.name or _name_of(choice.path)
                if not self.loras.has(name):
                    try:
                        await self.admin.load(name, choice.path)
                    except ApiError as error:
                        raise invalid("lora", error.message, code=error.code or "invalid_value") from None
                choices[index] = LoraChoice(name, choice.scale)
        try:
            return self.loras.selection([(choice.name, choice.scale) for choice in choices if choice.name])
        except UnknownAdapter as error:
            raise invalid("lora", f"{error}.", code="lora_not_found") from None
        except LoraError as error:
            raise invalid("lora", f"This model cannot run LoRA adapters: {error}.", code="lora_not_supported") from None

    def _submit(self, prepared: _Prepared, previews: int = 0, sink: PreviewSink | None = None) -> Job:
        # Counted before admission, so that unloading an adapter waits for every request admitted with it.
        self.loras.acquire(prepared.adapters)
        try:
            job = self._admit(prepared, previews, sink)
        except BaseException:
            self.loras.release(prepared.adapters)
            raise
        job.future.add_done_callback(lambda _: self.loras.release(prepared.adapters))
        return job

    def _admit(self, prepared: _Prepared, previews: int, sink: PreviewSink | None) -> Job:
        # A request that names its seed must get the same bytes every time, so it never joins a batch.
        may_fuse = prepared.request.options.seed is None
        try:
            return self.engine.submit(
                prepared.plan.calls, previews=previews, sink=sink, may_fuse=may_fuse, adapters=prepared.adapters
            )
        except QueueFull as full:
            raise ApiError(
                429,
                f"The server is busy: {self.engine.max_queue} requests are already waiting. Retry later.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(full.retry_after)},
            ) from None
        except Draining:
            raise _draining() from None

    async def _run(self, job: Job, deadline: float) -> list[Image.Image]:
        try:
            return await self.engine.result(job, deadline)
        except DeadlineExceeded:
            raise ApiError(
                504,
                f"The edit did not finish within {self.settings.request_timeout:g} s.",
                code="timeout",
                headers={"x-should-retry": "false"},  # the same edit would time out again
            ) from None
        except OutOfMemory:
            raise ApiError(
                503,
                "The server ran out of GPU memory for this edit. "
                "Retry later, or ask for a smaller size or fewer images.",
                code="out_of_memory",
                headers={"Retry-After": str(OUT_OF_MEMORY_RETRY_SECONDS)},
            ) from None
        except RunCancelled:
            if job.cancel_reason == "shutdown":
                raise _draining() from None
            raise ApiError(499, "The client closed the connection; the edit was stopped.", code="cancelled") from None

    async def _respond(self, prepared: _Prepared, deadline: float, connection: Request) -> Response:
        job = self._submit(prepared)
        async with _stop_on_disconnect(connection, job):
            outputs = await self._run(job, deadline)
        return images_response(
            await _encode(prepared, outputs),
            created=int(time.time()),
            output_format=prepared.request.output_format,
            size=prepared.plan.size,
            background=prepared.encoding.background,
            quality=reported_quality(prepared.request.options.quality),
            usage=prepared.usage.times(len(outputs)).as_openai(),
            seeds=prepared.spec.seeds,
        )

    def _stream(self, prepared: _Prepared, deadline: float) -> Response:
        """Answer with server-sent events: previews while the run goes, then one event per image."""
        request = prepared.request
        previews: asyncio.Queue[tuple[int, list[Image.Image]]] = asyncio.Queue()
        job = self._submit(prepared, request.partial_images, lambda index, images: previews.put_nowait((index, images)))
        info = StreamInfo(
            created_at=int(time.time()),
            size=prepared.plan.size,
            quality=reported_quality(request.options.quality),
            background=prepared.encoding.background,
            output_format=request.output_format,
        )
        usage = prepared.usage.as_openai()

        async def events() -> AsyncIterator[bytes]:
            result = asyncio.ensure_future(self._run(job, deadline))
            try:
                async for index, pictures in _until(previews, result):
                    for offset, encoded in enumerate(await _encode(prepared, pictures)):
                        yield partial_image_event(encoded, index * len(pictures) + offset, info)
                for encoded in await _encode(prepared, result.result()):
                    yield completed_event(encoded, info, usage)
            except ApiError as error:
                yield error_event(error.body())
            except Exception:
                log.exception("streamed edit failed")
                yield error_event(internal_error().body())
            finally:
                if not result.done():  # the client went away (Starlette cancels this generator)
                    log.info("client disconnected from the stream; stopping its edit")
                    note(stream="disconnected")
                    job.cancel("disconnect")
                    result.cancel()

        headers = {SEEDS_HEADER: ",".join(str(seed) for seed in prepared.spec.seeds), "Cache-Control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _name_of(path: str) -> str:
    """An adapter name for a request that gave only a path: the file's or directory's name, made safe."""
    stem = Path(path).stem or "adapter"
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip("._-")[:128] or "adapter"


def _draining() -> ApiError:
    return ApiError(
        503,
        "The server is shutting down and takes no new edits; retry shortly.",
        code="server_shutting_down",
        headers={"Retry-After": str(DRAINING_RETRY_SECONDS)},
    )


async def _encode(prepared: _Prepared, images: Sequence[Image.Image]) -> list[bytes]:
    def encode_all() -> list[bytes]:
        return [prepared.finish(image) for image in images]

    return await anyio.to_thread.run_sync(encode_all)


async def _until(
    previews: asyncio.Queue[tuple[int, list[Image.Image]]], result: asyncio.Future[object]
) -> AsyncIterator[tuple[int, list[Image.Image]]]:
    """Previews as they come, until ``result`` is done (previews sent before it are still given)."""
    while True:
        getter = asyncio.ensure_future(previews.get())
        try:
            done, _ = await asyncio.wait({getter, result}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():  # also when the stream is cancelled while waiting
                getter.cancel()
        if getter in done:
            yield getter.result()
            continue
        while not previews.empty():
            yield previews.get_nowait()
        return


@contextlib.asynccontextmanager
async def _stop_on_disconnect(connection: Request, job: Job) -> AsyncIterator[None]:
    """Cancel ``job`` if the client hangs up while the block runs.

    The body is already read, so the next message the server sends this
    request is ``http.disconnect``, when the client goes away.
    """

    async def watch() -> None:
        while (await connection.receive())["type"] != "http.disconnect":
            pass
        log.info("client disconnected; stopping its edit")
        job.cancel("disconnect")

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        watcher.cancel()
