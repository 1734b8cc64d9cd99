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
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from imgedit.api.body import read_body
from imgedit.api.errors import ApiError, http_error, internal_error, shutting_down
from imgedit.api.multipart import Form
from imgedit.api.parse import EditRequest, RequestLimits, parse_edit_request
from imgedit.api.responses import ImageItem, b64, error_response, images_response
from imgedit.config import Settings
from imgedit.edit import LoraChoice, Loras
from imgedit.errors import RequestError, invalid
from imgedit.logs import add_to_access_line, get_logger
from imgedit.lora.admin import LoraAdmin, PartlyApplied
from imgedit.lora.registry import LoraRegistry, UnknownLora
from imgedit.lora.sources import LoraError, name_for_path
from imgedit.lora.sync import ShuttingDown
from imgedit.media.encode import EncodeOptions, resolve_background
from imgedit.media.fetch import Fetcher
from imgedit.media.inputs import load_inputs
from imgedit.media.sizing import SizeLimits, output_size
from imgedit.model.call import RunCancelled
from imgedit.model.families import Family
from imgedit.scheduling.engine import Engine
from imgedit.scheduling.jobs import DeadlineExceeded, Draining, Job, ModelTurn, OutOfMemory, PreviewSink, QueueFull
from imgedit.serving.answers import Prepared, encode, images_body, link_items, store_images
from imgedit.serving.options import multipart_limits
from imgedit.serving.presets import Presets
from imgedit.serving.storage import Storage
from imgedit.serving.streaming import stream_answer

log = get_logger(__name__)

#: Seconds a client is asked to wait after the device ran out of memory.
OUT_OF_MEMORY_RETRY_SECONDS = 10


class EditHandler:
    """Serves edits for one loaded model.

    Args:
        settings: the server settings.
        family: the family of the loaded pipeline.
        engine: runs the pipeline.
        fetcher: reads URL inputs.
        lora_admin: loads and unloads LoRAs; by default one for this process alone.
        presets: the recipes behind ``quality`` (``IMGEDIT_PRESETS``), if any.
        storage: where ``response_format=url`` images are kept; None refuses them.
    """

    def __init__(
        self,
        settings: Settings,
        family: Family[Any],
        engine: Engine,
        fetcher: Fetcher,
        lora_admin: LoraAdmin | None = None,
        presets: Presets | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        #: The model's hooks for an engine shared by several models (set by start-up).
        self.turn: ModelTurn | None = None
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
        return await self.answering(self._read_and_answer(connection))

    async def answering(self, work: Awaitable[Response]) -> Response:
        """``work``'s response, or the OpenAI-shaped error response for its failure."""
        add_to_access_line(model=self.settings.served_name)
        try:
            return await work
        except RequestError as error:
            return error_response(http_error(error))
        except ApiError as error:
            if error.status >= 500:
                log.warning("edit failed with %d: %s", error.status, error.message)
            return error_response(error)
        except Exception:
            log.exception("edit failed")
            return error_response(internal_error())

    async def _read_and_answer(self, connection: Request) -> Response:
        return await self.answer(await read_body(connection, self.body_limits), connection)

    async def answer(self, body: Form | dict[str, Any], connection: Request) -> Response:
        """Parse, prepare and run the request in ``body``, and answer it on ``connection``."""
        add_to_access_line(model=self.settings.served_name)  # this model's, once the request is routed
        deadline = time.monotonic() + self.settings.request_timeout
        request = parse_edit_request(body, self.limits)
        if request.webhook_url is not None:
            raise invalid(
                "webhook_url", "'webhook_url' is for background jobs: send it with the header 'Prefer: respond-async'."
            )
        prepared = await self.prepare(request)
        if request.stream:
            return stream_answer(self, prepared, deadline)
        return await self._respond(prepared, deadline, connection)

    async def prepare(self, request: EditRequest) -> Prepared:
        """Load the request's inputs and LoRAs and plan its run."""
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
        return Prepared(
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

    def submit(self, prepared: Prepared, previews: int = 0, sink: PreviewSink | None = None) -> Job:
        """Admit the request's calls to the engine (429 when the queue is full)."""
        # Counted before admission, so that unloading a LoRA waits for every request admitted with it.
        self.loras.acquire(prepared.loras)
        try:
            job = self._admit(prepared, previews, sink)
        except BaseException:
            self.loras.release(prepared.loras)
            raise
        job.future.add_done_callback(lambda _: self.loras.release(prepared.loras))
        return job

    def _admit(self, prepared: Prepared, previews: int, sink: PreviewSink | None) -> Job:
        # A request that names its seed must get the same bytes every time, so it never joins a batch.
        may_fuse = prepared.request.options.seed is None
        try:
            return self.engine.submit(
                prepared.plan.calls,
                previews=previews,
                sink=sink,
                may_fuse=may_fuse,
                loras=prepared.loras,
                turn=self.turn,
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

    async def run(self, job: Job, deadline: float) -> list[Image.Image]:
        """The job's images, or the OpenAI-shaped error its end calls for."""
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

    async def _respond(self, prepared: Prepared, deadline: float, connection: Request) -> Response:
        job = self.submit(prepared)
        async with _stop_on_disconnect(connection, job):
            outputs = await self.run(job, deadline)
        encoded = await encode(prepared, outputs)
        if prepared.request.response_format == "url":
            storage = self._storage()
            keep_until = int(time.time()) + storage.url_ttl
            names = await store_images(storage, encoded, prepared.request.output_format, keep_until)
            items = await link_items(storage, names, str(connection.base_url), keep_until)
        else:
            items = [ImageItem(b64_json=b64(image)) for image in encoded]
        return images_response(images_body(prepared, items), prepared.spec.seeds)

    def _storage(self) -> Storage:
        if self.storage is None:
            raise invalid("response_format", "This server keeps no images; use response_format=b64_json.")
        return self.storage


def _draining() -> ApiError:
    return shutting_down("The server is shutting down and takes no new edits; retry shortly.")


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
