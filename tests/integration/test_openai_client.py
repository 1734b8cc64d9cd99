"""The official ``openai`` SDK against a real server, with strict response validation."""

from __future__ import annotations

import base64

import openai
import pytest
from openai import OpenAI

from tests.helpers import decode, gradient_png, image_bytes

pytestmark = pytest.mark.integration

MODEL = "qwen-image-edit-plus"


@pytest.fixture(scope="module")
def client(server):
    with OpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0, _strict_response_validation=True) as sdk:
        yield sdk


def images_of(result) -> list:
    return [decode(base64.b64decode(item.b64_json)) for item in result.data]


def test_models_list(client):
    models = client.models.list()
    assert [model.id for model in models] == [MODEL]
    assert models.data[0].owned_by == "imgedit"
    assert client.models.retrieve(MODEL).id == MODEL


def test_one_file(client, tmp_path):
    path = tmp_path / "input.png"
    path.write_bytes(gradient_png(96, 64))
    with path.open("rb") as image:
        result = client.images.edit(image=image, prompt="make it night", model=MODEL)
    (output,) = images_of(result)
    # size=auto: the tiny model's native 64x64 area at 3:2, raised (still 3:2) until no side is under 64.
    assert output.format == "PNG" and output.size == (96, 64)
    assert (result.output_format, result.size, result.background) == ("png", "96x64", "opaque")
    assert result.quality == "high" and result.usage is not None and result.usage.total_tokens > 0


def test_a_list_of_files_is_sent_as_image_brackets_and_all_are_used(client, tmp_path):
    paths = []
    for index, size in enumerate([(64, 64), (80, 48)]):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(gradient_png(*size))
    both = client.images.edit(image=paths, prompt="combine them", size="64x64", extra_body={"seed": 3})
    first_only = client.images.edit(image=paths[:1], prompt="combine them", size="64x64", extra_body={"seed": 3})
    assert [image.size for image in images_of(both)] == [(64, 64)]
    assert both.data[0].b64_json != first_only.data[0].b64_json


def test_raw_bytes(client):
    result = client.images.edit(image=image_bytes(64, 64, fmt="WEBP"), prompt="123")
    assert len(result.data) == 1


def test_spec_example_with_urls_in_extra_body(client):
    urls = [
        "data:image/png;base64," + base64.b64encode(gradient_png(72, 72)).decode(),
        "data:image/jpeg;base64," + base64.b64encode(image_bytes(64, 64, fmt="JPEG")).decode(),
    ]
    result = client.images.edit(
        image=[],
        model=MODEL,
        prompt="Change the bears in the two input images into walking together.",
        size="64x64",
        stream=False,
        output_format="jpeg",
        extra_body={"url": urls, "num_inference_steps": 3, "guidance_scale": 1, "seed": 777},
    )
    (output,) = images_of(result)
    assert output.format == "JPEG" and output.size == (64, 64)
    assert result.output_format == "jpeg"


def test_n_formats_and_seed_reproducibility(client):
    arguments = dict(image=gradient_png(), prompt="p", n=2, output_format="webp", extra_body={"seed": 5})
    first = client.images.edit(**arguments)
    second = client.images.edit(**arguments)
    assert [image.format for image in images_of(first)] == ["WEBP", "WEBP"]
    assert [item.b64_json for item in first.data] == [item.b64_json for item in second.data]
    assert first.data[0].b64_json != first.data[1].b64_json


def test_seeds_and_request_id_headers(client):
    raw = client.images.with_raw_response.edit(
        image=gradient_png(), prompt="p", n=2, extra_body={"seed": 10}, extra_headers={"x-request-id": "sdk-trace-1"}
    )
    assert raw.headers["x-imgedit-seeds"] == "10,11"
    assert raw.headers["x-request-id"] == "sdk-trace-1"
    assert len(raw.parse().data) == 2


def test_bad_request_error_is_readable(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=gradient_png(), prompt="p", size="1024x")
    error = caught.value
    assert error.status_code == 400
    assert error.param == "size"
    assert "Invalid size format: '1024x'" in str(error)
    assert error.request_id


def test_missing_image_is_unprocessable(client):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.images.edit(image=[], prompt="p")
    assert "Field 'image' or 'url' is required" in str(caught.value)


def test_wrong_model_names_both(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=gradient_png(), prompt="p", model="gpt-image-1")
    assert "gpt-image-1" in str(caught.value) and MODEL in str(caught.value)


@pytest.mark.parametrize("partial_images", [0, 1, 2, 3])
def test_streaming_with_the_sdk(client, partial_images):
    from openai.types import ImageEditCompletedEvent, ImageEditPartialImageEvent

    arguments = dict(
        image=gradient_png(96, 64), prompt="p", n=2, size="96x64", extra_body={"seed": 21, "num_inference_steps": 8}
    )
    events = list(client.images.edit(**arguments, stream=True, partial_images=partial_images, output_format="webp"))
    partials = [event for event in events if isinstance(event, ImageEditPartialImageEvent)]
    completed = [event for event in events if isinstance(event, ImageEditCompletedEvent)]
    assert len(events) == len(partials) + len(completed)
    assert [event.partial_image_index for event in partials] == list(range(2 * partial_images))
    assert events[-2:] == completed and len(completed) == 2
    for event in events:
        assert (event.size, event.quality, event.background, event.output_format) == ("96x64", "high", "opaque", "webp")
        image = decode(base64.b64decode(event.b64_json))
        assert (image.format, image.size) == ("WEBP", (96, 64))
    for event in completed:
        usage = event.usage
        assert usage.input_tokens == usage.input_tokens_details.text_tokens + usage.input_tokens_details.image_tokens
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0
    plain = client.images.edit(**arguments, output_format="webp")
    assert [event.b64_json for event in completed] == [item.b64_json for item in plain.data]


def test_a_bad_streamed_request_is_refused_before_the_stream(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=gradient_png(), prompt="p", stream=True, size="10x10")
    assert caught.value.param == "size"
