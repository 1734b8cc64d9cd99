from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from imgedit.api.auth import ApiKeyMiddleware, key_is_valid, parse_keys


def app(keys: tuple[bytes, ...]) -> Starlette:
    async def ok(request):
        return PlainTextResponse("ok")

    application = Starlette(routes=[Route("/v1/models", ok), Route("/readyz", ok), Route("/metrics", ok)])
    application.add_middleware(ApiKeyMiddleware, keys=keys)
    return application


def test_parse_keys():
    assert parse_keys(None) == () and parse_keys("") == ()
    assert parse_keys(" alpha , beta,,") == (b"alpha", b"beta")


def test_any_configured_key_is_valid_and_nothing_else():
    keys = (b"alpha", b"beta")
    assert key_is_valid(b"alpha", keys) and key_is_valid(b"beta", keys)
    assert not key_is_valid(b"alph", keys) and not key_is_valid(b"alphaa", keys) and not key_is_valid(b"", keys)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer alpha", 200),
        ("bearer beta", 200),
        ("Bearer  alpha ", 200),
        ("Bearer gamma", 401),
        ("Basic alpha", 401),
        ("alpha", 401),
        ("Bearer", 401),
        (None, 401),
    ],
)
def test_v1_needs_a_bearer_key(authorization, status):
    headers = {"authorization": authorization} if authorization is not None else {}
    with TestClient(app((b"alpha", b"beta"))) as client:
        response = client.get("/v1/models", headers=headers)
    assert response.status_code == status
    if status == 401:
        body = response.json()
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
        assert response.headers["www-authenticate"] == "Bearer"
        assert "alpha" not in response.text and "gamma" not in response.text


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_probes_and_metrics_stay_open(path):
    with TestClient(app((b"alpha",))) as client:
        assert client.get(path).status_code == 200


def test_no_keys_means_no_check():
    with TestClient(app(())) as client:
        assert client.get("/v1/models").status_code == 200


def test_signed_image_links_need_no_key_and_open_nothing_else():
    async def ok(request):
        return PlainTextResponse("ok")

    application = Starlette(routes=[Route("/v1/images/files/{name}", ok), Route("/v1/{rest:path}", ok)])
    application.add_middleware(ApiKeyMiddleware, keys=(b"alpha",))
    client = TestClient(application)
    assert client.get("/v1/images/files/1800000000_x.png").status_code == 200
    assert client.get("/v1/images/files").status_code == 401
    assert client.get("/v1/images/edits/edit_1").status_code == 401
    assert client.get("/v1/images/filesX/y").status_code == 401
