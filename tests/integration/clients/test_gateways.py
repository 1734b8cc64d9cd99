"""JSON bodies as gateways and agents send them, and Open WebUI's exact multipart request, replayed."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import httpx
import pytest

from tests.helpers import gradient_png
from tests.integration.clients.shapes import data_url, left_half_mask, picture

pytestmark = pytest.mark.integration

IMAGE = gradient_png(64, 64)


def test_json_and_multipart_with_the_same_seed_give_the_same_bytes(server):
    fields = {"prompt": "make it snow", "size": "64x64", "seed": 99, "n": 2, "output_format": "webp"}
    as_json = httpx.post(
        f"{server.url}/v1/images/edits",
        json={**fields, "images": [{"image_url": data_url(IMAGE)}], "mask": {"image_url": data_url(left_half_mask())}},
        timeout=120,
    )
    as_form = httpx.post(
        f"{server.url}/v1/images/edits",
        files=[("image", IMAGE), ("mask", left_half_mask())],
        data={key: str(value) for key, value in fields.items()},
        timeout=120,
    )
    assert as_json.status_code == as_form.status_code == 200, as_json.text
    assert [item["b64_json"] for item in as_json.json()["data"]] == [
        item["b64_json"] for item in as_form.json()["data"]
    ]
    assert as_json.headers["x-imgedit-seeds"] == "99,100"
    body = as_json.json()
    assert (body["size"], body["output_format"], body["quality"]) == ("64x64", "webp", "high")
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]


def test_a_json_stream_sends_the_same_events(server):
    with httpx.stream(
        "POST",
        f"{server.url}/v1/images/edits",
        json={"prompt": "p", "images": [{"image_url": data_url(IMAGE)}], "stream": True, "partial_images": 1},
        timeout=120,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [event["type"] for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[-1]["usage"]["output_tokens"] > 0 and events[-1]["quality"] == "high"


def test_gateway_shapes_url_strings_chat_style_objects_and_nulls(server):
    answer = httpx.post(
        f"{server.url}/v1/images/edits",
        json={
            "model": "qwen-image-edit-plus",
            "prompt": "p",
            "images": [{"image_url": {"url": data_url(IMAGE)}}],
            "url": data_url(gradient_png(32, 32)),
            "n": None,
            "quality": "standard",
            "input_fidelity": "high",
            "moderation": "low",
            "response_format": "b64_json",
            "safety_identifier": "user-1234",
        },
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert picture(answer.json()["data"][0]["b64_json"]).size == (64, 64)


def test_file_ids_get_a_400_that_says_why(server):
    answer = httpx.post(
        f"{server.url}/v1/images/edits", json={"prompt": "p", "images": [{"file_id": "file-123"}]}, timeout=60
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("images", "unsupported_file_id") and "Files API" in error["message"]


def test_open_webuis_request_replayed(server):
    """Open WebUI posts with aiohttp: text fields, then ``image`` (one) or ``image[]`` (several) files
    named by a UUID with the data URL's type, and ``response_format=b64_json``."""

    async def post(images: list[bytes]) -> tuple[int, dict]:
        form = aiohttp.FormData()
        for key, value in {"model": "qwen-image-edit-plus", "prompt": "p", "size": "64x64", "n": 1}.items():
            form.add_field(key, str(value))
        form.add_field("background", "auto")
        form.add_field("response_format", "b64_json")
        name = "image" if len(images) == 1 else "image[]"
        for image in images:
            form.add_field(name, image, filename=f"{uuid.uuid4()}.png", content_type="image/png")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.url}/v1/images/edits", data=form, headers={"Authorization": "Bearer sk-unused"}
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    for images in ([IMAGE], [IMAGE, gradient_png(48, 48)]):
        status, body = asyncio.run(post(images))
        assert status == 200, body
        assert picture(body["data"][0]["b64_json"]).size == (64, 64)
