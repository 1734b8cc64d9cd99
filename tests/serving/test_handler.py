"""The whole request path in-process, on the tiny model: validate, load, plan, run, encode, respond."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading

import pytest

from imgedit.api.responses import SEEDS_HEADER
from imgedit.config import Settings
from imgedit.media.fetch import Fetcher, FetchPolicy
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall
from imgedit.model.families.base import Defaults
from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
from imgedit.scheduling.engine import Engine
from imgedit.serving.handler import EditHandler
from tests.helpers import decode, form_request, gradient_png, http_request, image_bytes, multipart_body

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = Engine(previewer=QwenImageEditPlusFamily(tiny_model.pipeline).preview)
    yield engine
    engine.close()


def make_handler(tiny_model, engine, **settings) -> EditHandler:
    config = Settings(model="tiny:qwen-image-edit-plus", **settings)
    family = QwenImageEditPlusFamily(
        tiny_model.pipeline,
        overrides=Defaults(steps=2),
        max_images=config.max_images,
        native_pixels=tiny_model.native_pixels,  # 64x64, as the server serves a tiny model
    )
    return EditHandler(config, family, engine, Fetcher(FetchPolicy()))


@pytest.fixture(scope="module")
def handler(tiny_model, engine):
    return make_handler(tiny_model, engine)


async def call(handler: EditHandler, *parts):
    response = await handler.handle(form_request(*parts))
    return response, json.loads(response.body)


async def test_success_body_and_headers(handler):
    response, body = await call(handler, ("image", gradient_png()), ("prompt", "p"), ("seed", "42"))
    assert response.status_code == 200
    assert response.media_type == "application/json"
    assert response.headers[SEEDS_HEADER] == "42"
    assert set(body) == {"created", "data", "output_format", "size", "background", "quality", "usage"}
    assert body["quality"] == "high"  # auto runs the default steps
    usage = body["usage"]
    assert usage["input_tokens"] == sum(usage["input_tokens_details"].values()) > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    patch = handler.family.size_multiple
    assert usage["output_tokens"] == (64 // patch) ** 2  # one 64x64 output in latent patches
    assert isinstance(body["created"], int)
    assert body["data"][0]["url"] is None and body["data"][0]["revised_prompt"] is None
    assert (body["output_format"], body["size"], body["background"]) == ("png", "64x64", "opaque")
    assert decode(base64.b64decode(body["data"][0]["b64_json"])).size == (64, 64)


async def test_same_seed_same_bytes_and_image_i_uses_seed_plus_i(handler):
    parts = [("image", gradient_png()), ("prompt", "p")]
    _, pair = await call(handler, *parts, ("n", "2"), ("seed", "7"))
    _, again = await call(handler, *parts, ("n", "2"), ("seed", "7"))
    response, single = await call(handler, *parts, ("seed", "8"))
    assert [item["b64_json"] for item in pair["data"]] == [item["b64_json"] for item in again["data"]]
    assert pair["data"][0]["b64_json"] != pair["data"][1]["b64_json"]
    assert pair["data"][1]["b64_json"] == single["data"][0]["b64_json"]
    assert response.headers[SEEDS_HEADER] == "8"


async def test_random_seeds_are_reported_and_consecutive(handler):
    response, body = await call(handler, ("image", gradient_png()), ("prompt", "p"), ("n", "3"))
    seeds = [int(seed) for seed in response.headers[SEEDS_HEADER].split(",")]
    assert len(body["data"]) == 3
    assert seeds == [seeds[0], (seeds[0] + 1) % 2**64, (seeds[0] + 2) % 2**64]


async def test_seed_wraps_at_two_to_the_64(handler):
    response, _ = await call(handler, ("image", gradient_png()), ("prompt", "p"), ("n", "2"), ("seed", str(2**64 - 1)))
    assert response.headers[SEEDS_HEADER] == f"{2**64 - 1},0"


@pytest.mark.parametrize(
    ("requested", "fmt", "pil"), [("jpeg", "jpeg", "JPEG"), ("jpg", "jpeg", "JPEG"), ("webp", "webp", "WEBP")]
)
async def test_output_formats(handler, requested, fmt, pil):
    _, body = await call(handler, ("image", gradient_png()), ("prompt", "p"), ("output_format", requested))
    assert body["output_format"] == fmt
    assert decode(base64.b64decode(body["data"][0]["b64_json"])).format == pil


async def test_size_is_rounded_to_the_model_multiple_and_reported(handler):
    _, body = await call(handler, ("image", gradient_png()), ("prompt", "p"), ("size", "100x70"))
    assert body["size"] == "104x72"
    assert decode(base64.b64decode(body["data"][0]["b64_json"])).size == (104, 72)


async def test_auto_size_is_the_native_area_at_the_first_images_aspect(handler):
    _, body = await call(handler, ("image", gradient_png(96, 64)), ("image", gradient_png(64, 128)), ("prompt", "p"))
    assert body["size"] == "96x64"  # 4096 px at 3:2 is 78x52; raised to a 64-pixel short side, 3:2 is 96x64


async def test_auto_size_follows_the_first_image_when_the_operator_says_so(tiny_model, engine):
    handler = make_handler(tiny_model, engine, auto_size="input")
    _, body = await call(handler, ("image", gradient_png(96, 64)), ("image", gradient_png(64, 128)), ("prompt", "p"))
    assert body["size"] == "96x64"


@pytest.mark.parametrize(
    ("background", "fmt", "mode", "reported"),
    [
        ("auto", "png", "RGBA", "transparent"),
        ("transparent", "webp", "RGBA", "transparent"),
        ("opaque", "png", "RGB", "opaque"),
        ("auto", "jpeg", "RGB", "opaque"),
    ],
)
async def test_background_follows_the_first_inputs_alpha(handler, background, fmt, mode, reported):
    parts = [("image", gradient_png(alpha=True)), ("prompt", "p"), ("background", background), ("output_format", fmt)]
    _, body = await call(handler, *parts)
    image = decode(base64.b64decode(body["data"][0]["b64_json"]))
    assert image.mode == mode
    assert body["background"] == reported
    if mode == "RGBA":
        assert image.getpixel((5, 30))[3] == 0 and image.getpixel((60, 30))[3] == 255


async def test_input_image_cap_is_configurable(tiny_model, engine):
    handler = make_handler(tiny_model, engine, max_images=1)
    response, body = await call(handler, ("image", image_bytes()), ("image[]", image_bytes()), ("prompt", "p"))
    assert response.status_code == 400
    assert body["error"]["code"] == "too_many_images"


async def test_a_bad_image_names_its_index(handler):
    response, body = await call(handler, ("image", image_bytes()), ("image[]", b"<html>"), ("prompt", "p"))
    assert response.status_code == 400
    assert body["error"]["param"] == "image[1]"


async def test_read_errors_are_answered(tiny_model, engine):
    handler = make_handler(tiny_model, engine, max_body_bytes=1024)
    body, content_type = multipart_body([("prompt", b"p", None), ("image", b"x" * 4096, "a.png")])
    response = await handler.handle(http_request(body, content_type))
    assert response.status_code == 413
    assert json.loads(response.body)["error"]["message"] == "The request body exceeds the limit of 1024 bytes."


async def test_deadline_gives_504(tiny_model, engine):
    handler = make_handler(tiny_model, engine, request_timeout=0.001)
    response, body = await call(handler, ("image", image_bytes()), ("prompt", "p"), ("num_inference_steps", "50"))
    assert response.status_code == 504
    assert body["error"]["code"] == "timeout"
    assert response.headers["x-should-retry"] == "false"


async def test_unexpected_failures_are_500_without_internals(handler, monkeypatch):
    async def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(handler.engine, "result", explode)
    response, body = await call(handler, ("image", image_bytes()), ("prompt", "p"))
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"
    assert "secret" not in json.dumps(body)


async def test_access_details_and_no_prompt_at_info(handler, caplog):
    from imgedit.logs import RequestContext, current_request

    context = RequestContext("req_test")
    token = current_request.set(context)
    logger = logging.getLogger("imgedit")
    logger.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="imgedit"):
            await call(handler, ("image", image_bytes()), ("prompt", "a very private prompt"), ("user", "alice"))
        assert not any(
            "private prompt" in record.getMessage() or "alice" in record.getMessage() for record in caplog.records
        )
        with caplog.at_level(logging.DEBUG, logger="imgedit"):
            await call(handler, ("image", image_bytes()), ("prompt", "a very private prompt"))
    finally:
        logger.propagate = False
        current_request.reset(token)
    assert context.details == {"model": "qwen-image-edit-plus", "n": 1, "size": Size(64, 64), "steps": 2}
    debug = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert any("a very private prompt" in message for message in debug)


async def test_a_mask_keeps_the_original_outside_it(handler):
    from PIL import Image

    original = Image.new("RGB", (64, 64), (10, 200, 10))
    buffer, mask_buffer = io.BytesIO(), io.BytesIO()
    original.save(buffer, format="PNG")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # edit the left half
    mask.save(mask_buffer, format="PNG")
    response, body = await call(
        handler, ("image", buffer.getvalue()), ("mask", mask_buffer.getvalue()), ("prompt", "p"), ("size", "128x128")
    )
    assert response.status_code == 200
    output = decode(base64.b64decode(body["data"][0]["b64_json"])).convert("RGB")
    assert output.size == (128, 128)
    assert output.getpixel((120, 64)) == (10, 200, 10)  # right half: the original
    assert output.getpixel((10, 64)) != (10, 200, 10)  # left half: edited


async def test_a_bad_mask_is_a_400_naming_it(handler):
    response, body = await call(
        handler,
        ("image", image_bytes(64, 64)),
        ("mask", image_bytes(32, 32, (0, 0, 0, 0), mode="RGBA")),
        ("prompt", "p"),
    )
    assert response.status_code == 400
    assert body["error"]["param"] == "mask"


async def test_a_full_queue_is_a_429_with_retry_after(tiny_model, monkeypatch):
    reached, release = threading.Event(), threading.Event()
    invoke = PipelineCall.invoke

    def held_at_the_first_step(call, on_step=None):
        def step(index, total, latents):
            if index == 0:
                reached.set()
                release.wait(timeout=60)
            on_step(index, total, latents)

        return invoke(call, step)

    monkeypatch.setattr(PipelineCall, "invoke", held_at_the_first_step)
    busy = Engine(max_queue=0)
    try:
        handler = make_handler(tiny_model, busy)
        slow = asyncio.ensure_future(call(handler, ("image", image_bytes()), ("prompt", "p")))
        assert await asyncio.to_thread(reached.wait, 60)  # the first request runs
        response, body = await call(handler, ("image", image_bytes()), ("prompt", "p"))
        release.set()
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert (await slow)[0].status_code == 200
    finally:
        busy.close()


async def test_draining_is_a_503(tiny_model):
    engine = Engine()
    try:
        engine.drain(grace=60)
        response, body = await call(make_handler(tiny_model, engine), ("image", image_bytes()), ("prompt", "p"))
    finally:
        engine.close()
    assert response.status_code == 503
    assert body["error"]["code"] == "server_shutting_down" and response.headers["retry-after"]
    assert response.headers["connection"] == "close"  # not reused as the server closes it


async def test_out_of_memory_is_a_503_with_retry_after(handler, monkeypatch):
    from imgedit.scheduling.jobs import OutOfMemory

    async def out_of_memory(*args, **kwargs):
        raise OutOfMemory

    monkeypatch.setattr(handler.engine, "result", out_of_memory)
    response, body = await call(handler, ("image", image_bytes()), ("prompt", "p"))
    assert response.status_code == 503
    assert body["error"]["code"] == "out_of_memory" and int(response.headers["retry-after"]) > 0


async def test_a_stream_sends_previews_then_one_completed_event_per_image(handler):
    response = await handler.handle(
        form_request(
            ("image", gradient_png()),
            ("prompt", "p"),
            ("stream", "true"),
            ("partial_images", "2"),
            ("n", "2"),
            ("num_inference_steps", "6"),
            ("seed", "3"),
        ),
    )
    assert response.media_type == "text/event-stream"
    assert response.headers[SEEDS_HEADER] == "3,4"
    chunks = [chunk async for chunk in response.body_iterator]
    events = [json.loads(chunk.decode().split("data: ", 1)[1]) for chunk in chunks]
    assert all(chunk.decode().startswith("event: image_edit.") for chunk in chunks)
    assert [event["type"] for event in events] == ["image_edit.partial_image"] * 4 + ["image_edit.completed"] * 2
    assert [event["partial_image_index"] for event in events[:4]] == [0, 1, 2, 3]
    assert all(event["size"] == "64x64" and event["quality"] == "high" for event in events)
    assert events[-1]["usage"]["total_tokens"] > 0
