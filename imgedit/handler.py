"""The request path of ``POST /v1/images/edits``, as one straight line.

parse (the input descriptor) -> validate -> load inputs -> plan for the model
family -> run on the engine -> finish (exact size, mask) -> encode -> respond. Each step lives in its own
module; this one only strings them together, turns failures into OpenAI-shaped
errors, and adds the model, ``n``, size and steps to the request's access line.
"""

from __future__ import annotations

import secrets
import time

import anyio.to_thread
from starlette.responses import Response

from imgedit.config import Settings
from imgedit.encode import EncodeOptions, encode_image, resolve_background
from imgedit.engine import DeadlineExceeded, Engine
from imgedit.errors import ApiError, internal_error
from imgedit.families import FamilyAdapter
from imgedit.fetch import Fetcher
from imgedit.inputs import load_inputs
from imgedit.logs import get_logger
from imgedit.masking import fit, keep_outside
from imgedit.multipart import Form
from imgedit.request import MAX_SEED, EditRequest, RequestLimits, parse_edit_request
from imgedit.request_context import note
from imgedit.responses import images_response
from imgedit.sizing import SizeLimits, output_size

log = get_logger(__name__)


def seeds_for(request: EditRequest) -> list[int]:
    """Image i uses seed + i (wrapping at 2**64); a random base seed when none is given."""
    base = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return [(base + index) % (MAX_SEED + 1) for index in range(request.n)]


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
        self, settings: Settings, model_id: str, adapter: FamilyAdapter, engine: Engine, fetcher: Fetcher
    ) -> None:
        self.settings = settings
        self.model_id = model_id
        self.adapter = adapter
        self.engine = engine
        self.fetcher = fetcher
        self.limits = RequestLimits(
            max_images=adapter.max_images,
            max_prompt_chars=settings.max_prompt_chars,
            size=SizeLimits(max_side=settings.max_side, max_pixels=settings.max_output_pixels),
            model_names=tuple(dict.fromkeys((settings.served_name, model_id))),
        )

    async def handle(self, form: Form | None, form_error: ApiError | None) -> Response:
        """Serve one request whose body the input descriptor already read.

        Never raises: every failure becomes an OpenAI-shaped error response.
        """
        note(model=self.settings.served_name)
        try:
            if form_error is not None:
                raise form_error
            assert form is not None
            return await self._edit(form, time.monotonic() + self.settings.request_timeout)
        except ApiError as error:
            if error.status >= 500:
                log.warning("edit failed with %d: %s", error.status, error.message)
            return error.to_response()
        except Exception:
            log.exception("edit failed")
            return internal_error().to_response()

    async def _edit(self, form: Form, deadline: float) -> Response:
        request = parse_edit_request(form, self.limits)
        note(n=request.n)
        log.debug("prompt=%r negative_prompt=%r user=%r", request.prompt, request.negative_prompt, request.user)
        inputs = await load_inputs(request, self.fetcher, self.settings.max_input_pixels)
        first = inputs.images[0]
        size = output_size(request.size, first.size, self.adapter.size_multiple, self.limits.size)
        seeds = seeds_for(request)
        plan = self.adapter.plan(request, inputs.images, size, seeds, inputs.mask_region)
        note(size=size, steps=plan.steps, **({"mask": plan.mask_mode} if plan.mask_mode != "none" else {}))
        try:
            outputs = await self.engine.run(plan.calls, deadline)
        except DeadlineExceeded:
            raise ApiError(
                504,
                f"The edit did not finish within {self.settings.request_timeout:g} s.",
                code="timeout",
                headers={"x-should-retry": "false"},  # the same edit would time out again
            ) from None
        options = EncodeOptions(
            output_format=request.output_format,
            quality=request.output_compression,
            background=resolve_background(request.background, first.alpha, request.output_format),
            png_compress_level=self.settings.png_compress_level,
        )

        def finish_and_encode() -> list[bytes]:
            encoded = []
            for output in outputs:
                image = fit(output, size)
                if inputs.mask_region is not None:
                    image = keep_outside(image, first.rgb, inputs.mask_region)
                encoded.append(encode_image(image, first.alpha, options))
            return encoded

        encoded = await anyio.to_thread.run_sync(finish_and_encode)
        return images_response(
            encoded,
            created=int(time.time()),
            output_format=request.output_format,
            size=size,
            background=options.background,
            seeds=seeds,
        )
