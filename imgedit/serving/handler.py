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
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imgedit.api.body import read_body
from imgedit.api.errors import ApiError, http_error, internal_error, shutting_down
from imgedit.api.parse import EditRequest, RequestLimits, parse_edit_request
from imgedit.api.responses import (
    SEEDS_HEADER,
    ImageItem,
    ImagesResponse,
    StreamInfo,
    Usage,
    b64,
    completed_event,
    error_event,
    error_response,
    images_response,
    partial_image_event,
    reported_quality,
)
from imgedit.config import Settings
from imgedit.edit import LoraChoice, Loras
from imgedit.errors import RequestError, invalid
from imgedit.logs import add_to_access_line, get_logger
from imgedit.lora.admin import LoraAdmin, PartlyApplied
from imgedit.lora.registry import LoraRegistry, UnknownLora
from imgedit.lora.sources import LoraError, name_for_path
from imgedit.lora.sync import ShuttingDown
from imgedit.media.encode import EncodeOptions, encode_image, resolve_background
from imgedit.media.fetch import Fetcher
from imgedit.media.inputs import Inputs, load_inputs
from imgedit.media.masking import fit, keep_outside
from imgedit.media.sizing import SizeLimits, output_size
from imgedit.model.call import EditPlan, RunCancelled, Tokens
from imgedit.model.families import Family
from imgedit.model.spec import EditSpec
from imgedit.scheduling.engine import Engine
from imgedit.scheduling.jobs import DeadlineExceeded, Draining, Job, OutOfMemory, PreviewSink, QueueFull
from imgedit.serving.options import multipart_limits
from imgedit.serving.presets import Presets

log = get_logger(__name__)

#: Seconds a client is asked to wait after the device ran out of memory.
OUT_OF_MEMORY_RETRY_SECONDS = 10


@dataclass(frozen=True, kw_only=True)
class _Prepared:
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


class EditHandler:
    """Serves edits for one loaded model.

    Args:
        settings: the server settings.
        family: the family of the loaded pipeline.
        engine: runs the pipeline.
        fetcher: reads URL inputs.
        lora_admin: loads and unloads LoRAs; by default one for this process alone.
        presets: the recipes behind ``quality`` (``IMGEDIT_PRESETS``), if any.
    """

    def __init__(
        self,
        settings: Settings,
        family: Family[Any],
        engine: Engine,
        fetcher: Fetcher,
        lora_admin: LoraAdmin | None = None,
        presets: Presets | None = None,
    ) -> None:
        self.settings = settings
        self.presets = presets
        self.family = family
        self.engine = engine
        self.fetcher = fetcher
        #: Loads and unloads LoRAs; its registry holds the ones requests may choose.
        self.lora_admin = lora_admin or LoraAdmin(
            LoraRegistry(family.loaded, max_loras=settings.max_loras), engine, settings.lora_dir
        )
        self.loras = self.lora_admin.registry
        self.body_limits = multipart_limits(settings)
        #: The area ``size=auto`` aims at: the model's native one, or None for the first image's own size.
        self.auto_pixels = family.native_pixels if settings.auto_size == "native" else None
        self.limits = RequestLimits(
            max_images=family.max_images,
            max_prompt_chars=settings.max_prompt_chars,
            size=SizeLimits(max_side=settings.max_side, max_pixels=settings.max_output_pixels),
            model_names=tuple(dict.fromkeys((settings.served_name, settings.model))),
            lora_names=self.loras.names,
        )

    async def handle(self, connection: Request) -> Response:
        """Serve one request, reading its body from ``connection``, which is watched for a hang-up.

        Never raises: every failure becomes an OpenAI-shaped error response.
        """
        add_to_access_line(model=self.settings.served_name)
        try:
            body = await read_body(connection, self.body_limits)
            deadline = time.monotonic() + self.settings.request_timeout
            prepared = await self._prepare(parse_edit_request(body, self.limits))
            if prepared.request.stream:
                return self._stream(prepared, deadline)
            return await self._respond(prepared, deadline, connection)
        except RequestError as error:
            return error_response(http_error(error))
        except ApiError as error:
            if error.status >= 500:
                log.warning("edit failed with %d: %s", error.status, error.message)
            return error_response(error)
        except Exception:
            log.exception("edit failed")
            return error_response(internal_error())

    async def _prepare(self, request: EditRequest) -> _Prepared:
        options, levers = request.options, None
        recipe = self.presets.for_quality(options.quality) if self.presets is not None else None
        if recipe is not None:  # the request's own fields win over its tier's
            options, levers = recipe.fill(options), recipe.levers_over(self.family.levers)
            add_to_access_line(preset=recipe.level)
        add_to_access_line(n=options.n)
        log.debug(
            "prompt=%r negative_prompt=%r user=%r safety_identifier=%r",
            options.prompt,
            options.negative_prompt,
            request.user,
            request.safety_identifier,
        )
        inputs = await load_inputs(request.sources, request.mask, self.fetcher, self.settings.max_input_pixels)
        size = output_size(
            request.size, inputs.first.size, self.family.size_multiple, self.limits.size, self.auto_pixels
        )
        spec = self.family.resolve(options, inputs.images, size, inputs.mask_region, levers)
        plan = self.family.plan(spec)
        add_to_access_line(
            size=size, steps=plan.steps, **({"mask": plan.mask_mode} if plan.mask_mode != "none" else {})
        )
        encoding = EncodeOptions(
            output_format=request.output_format,
            quality=request.output_compression,
            background=resolve_background(request.background, inputs.first.alpha, request.output_format),
            png_compress_level=self.settings.png_compress_level,
        )
        loras = await self._loras(request, recipe.loras if recipe is not None else ())
        if loras:
            add_to_access_line(lora=",".join(f"{name}:{scale:g}" for name, scale in loras))
        return _Prepared(
            request=request,
            inputs=inputs,
            spec=spec,
            plan=plan,
            encoding=encoding,
            tokens=self.family.tokens(spec),
            loras=loras,
        )

    async def _loras(self, request: EditRequest, tier: Sequence[LoraChoice]) -> Loras:
        """The LoRAs the request chose: ``model`` naming one, then ``lora``; paths are loaded first.

        A request that chooses none runs its speed tier's, ``tier``.

        Raises:
            RequestError: naming ``lora`` for a LoRA that is not loaded or cannot be.
            ApiError: 503 when a path would be loaded while the server shuts down.
        """
        choices = list(request.lora)
        if request.model is not None and self.loras.has(request.model):
            choices.insert(0, LoraChoice(request.model))
        choices = choices or list(tier)
        for index, choice in enumerate(choices):
            if choice.path is not None:
                name = choice.name or name_for_path(choice.path)
                if not self.loras.has(name):
                    try:
                        await self.lora_admin.load(name, choice.path)
                    except RequestError as error:
                        raise invalid("lora", error.message, code=error.code) from None
                    except PartlyApplied as error:
                        raise invalid("lora", str(error), code="lora_partly_applied") from None
                    except ShuttingDown:
                        raise _draining() from None
                choices[index] = LoraChoice(name, choice.scale)
        try:
            return self.loras.selection([(choice.name, choice.scale) for choice in choices if choice.name])
        except UnknownLora as error:
            raise invalid("lora", f"{error}.", code="lora_not_found") from None
        except LoraError as error:
            raise invalid("lora", f"This model cannot run LoRA adapters: {error}.", code="lora_not_supported") from None

    def _submit(self, prepared: _Prepared, previews: int = 0, sink: PreviewSink | None = None) -> Job:
        # Counted before admission, so that unloading a LoRA waits for every request admitted with it.
        self.loras.acquire(prepared.loras)
        try:
            job = self._admit(prepared, previews, sink)
        except BaseException:
            self.loras.release(prepared.loras)
            raise
        job.future.add_done_callback(lambda _: self.loras.release(prepared.loras))
        return job

    def _admit(self, prepared: _Prepared, previews: int, sink: PreviewSink | None) -> Job:
        # A request that names its seed must get the same bytes every time, so it never joins a batch.
        may_fuse = prepared.request.options.seed is None
        try:
            return self.engine.submit(
                prepared.plan.calls, previews=previews, sink=sink, may_fuse=may_fuse, loras=prepared.loras
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
        body = ImagesResponse(
            created=int(time.time()),
            data=[ImageItem(b64_json=b64(image)) for image in await _encode(prepared, outputs)],
            output_format=prepared.request.output_format,
            size=str(prepared.plan.size),
            background=prepared.encoding.background,
            quality=reported_quality(prepared.request.options.quality),
            usage=prepared.usage(len(outputs)),
        )
        return images_response(body, prepared.spec.seeds)

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
        usage = prepared.usage()

        async def events() -> AsyncIterator[bytes]:
            result = asyncio.ensure_future(self._run(job, deadline))
            try:
                async for index, pictures in _until(previews, result):
                    for offset, encoded in enumerate(await _encode(prepared, pictures)):
                        yield partial_image_event(encoded, index * len(pictures) + offset, info)
                for encoded in await _encode(prepared, result.result()):
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


def _draining() -> ApiError:
    return shutting_down("The server is shutting down and takes no new edits; retry shortly.")


async def _encode(prepared: _Prepared, images: Sequence[Image.Image]) -> list[bytes]:
    def encode_all() -> list[bytes]:
        return [prepared.finish(image) for image in images]

    return await anyio.to_thread.run_sync(encode_all)


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
