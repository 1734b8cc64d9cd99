"""A server with ``IMGEDIT_API_KEY``: the openai SDK's key opens /v1, probes stay open, keys stay out of logs."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import gradient_png
from tests.integration.conftest import API_KEYS as KEYS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guarded(keyed_server):
    return keyed_server


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_works_with_the_sdk(guarded, key):
    client = openai.OpenAI(api_key=key, base_url=f"{guarded.url}/v1", max_retries=0)
    assert [model.id for model in client.models.list()] == ["qwen-image-edit-plus"]
    assert len(client.images.edit(image=gradient_png(), prompt="p").data) == 1


def test_a_wrong_key_is_an_authentication_error(guarded):
    client = openai.OpenAI(api_key="sk-wrong", base_url=f"{guarded.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.images.edit(image=gradient_png(), prompt="p")
    assert caught.value.code == "invalid_api_key"
    assert caught.value.request_id


def test_no_key_is_a_401_and_probes_stay_open(guarded):
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert httpx.post(f"{guarded.url}/v1/images/edits", files={"image": gradient_png()}).status_code == 401
    for probe in ("/readyz", "/livez", "/metrics"):
        assert httpx.get(f"{guarded.url}{probe}").status_code == 200


def test_keys_never_reach_the_log(guarded):
    assert guarded.wait_for_log("GET /v1/models status=401")
    log = guarded.log()
    assert not any(key in log for key in (*KEYS, "sk-wrong"))


def test_the_playground_loads_without_a_key_while_the_api_needs_one(guarded):
    redirect = httpx.get(f"{guarded.url}/playground")
    assert redirect.is_redirect and redirect.headers["location"].endswith("/playground/")
    for path in ("/playground/", "/playground/playground.js", "/playground/playground.css"):
        response = httpx.get(f"{guarded.url}{path}")
        assert response.status_code == 200, path
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert 'src="playground.js"' in httpx.get(f"{guarded.url}/playground/").text
    assert httpx.get(f"{guarded.url}/playground/missing.js").status_code == 404
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert httpx.get(f"{guarded.url}/v1/models", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
