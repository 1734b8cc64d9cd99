from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from imgedit.api.access_log import MAX_LENGTH, AccessLogMiddleware, sanitize
from imgedit.logs import add_to_access_line, configure_logging, current_request_id, get_logger


def _app() -> Starlette:
    async def echo(request):
        get_logger("tests").info("handling")
        add_to_access_line(model="m", n=2)
        return PlainTextResponse(current_request_id(), status_code=418)

    app = Starlette(routes=[Route("/", echo)])
    app.add_middleware(AccessLogMiddleware)
    return app


def test_client_id_is_echoed_and_visible_to_the_handler():
    with TestClient(_app()) as client:
        response = client.get("/", headers={"x-request-id": "abc-123"})
    assert response.status_code == 418
    assert response.headers["x-request-id"] == "abc-123"
    assert response.text == "abc-123"


def test_missing_id_is_generated_and_unique():
    with TestClient(_app()) as client:
        first = client.get("/").headers["x-request-id"]
        second = client.get("/").headers["x-request-id"]
    assert first.startswith("req_") and second.startswith("req_")
    assert first != second


def test_sanitize_drops_unsafe_characters_and_truncates():
    assert sanitize("a b\r\nc<script>") == "abcscript"
    assert sanitize("x" * 500) == "x" * MAX_LENGTH
    assert sanitize("\r\n\t ") is None
    assert sanitize("") is None


def test_log_lines_carry_the_request_id(capsys):
    logger = logging.getLogger("imgedit")
    logger.handlers.clear()
    try:
        configure_logging("info")
        with TestClient(_app()) as client:
            client.get("/", headers={"x-request-id": "trace-me"})
        errors = capsys.readouterr().err
        assert "[trace-me] handling" in errors
        assert "[trace-me] GET / status=418 seconds=" in errors
        assert errors.rstrip().endswith("model=m n=2")
    finally:
        logger.handlers.clear()
