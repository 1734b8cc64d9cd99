"""LiteLLM's ``image_edit`` pointed at the server as an OpenAI-compatible provider."""

from __future__ import annotations

import os

import pytest

from tests.helpers import gradient_png
from tests.integration.clients.shapes import picture

pytestmark = pytest.mark.integration

# LiteLLM fetches a price list from the internet at import unless told to use its own copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")


def edit(server, **fields):
    return litellm.image_edit(
        model="openai/qwen-image-edit-plus", api_base=f"{server.url}/v1", api_key="unused", **fields
    )


def test_an_edit_and_a_list_of_images(server):
    single = edit(server, image=gradient_png(64, 64), prompt="snow", size="64x64")
    assert picture(single.data[0].b64_json).size == (64, 64)
    assert single.usage.total_tokens > 0
    several = edit(server, image=[gradient_png(64, 64), gradient_png(64, 64)], prompt="two", size="64x64", n=2)
    assert [picture(item.b64_json).size for item in several.data] == [(64, 64)] * 2


def test_errors_are_litellms_own_with_the_servers_message(server):
    with pytest.raises(litellm.BadRequestError, match="Invalid size format: '1024x'"):
        edit(server, image=gradient_png(64, 64), prompt="p", size="1024x")
