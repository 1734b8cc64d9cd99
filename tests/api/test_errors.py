from __future__ import annotations

import json

import pytest

from imgedit.api.errors import ApiError, http_error, internal_error
from imgedit.api.responses import error_response
from imgedit.errors import NotFound, invalid


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_body_is_the_openai_shape_plus_detail(status, kind):
    response = error_response(ApiError(status, "Something is wrong.", param="size", code="invalid_value"))
    assert response.status_code == status
    assert response.media_type == "application/json"
    assert json.loads(response.body) == {
        "error": {"message": "Something is wrong.", "type": kind, "param": "size", "code": "invalid_value"},
        "detail": "Something is wrong.",
    }


def test_a_refused_value_is_a_400_for_the_field():
    error = http_error(invalid("n", "Bad n."))
    assert (error.status, error.param, error.code, str(error)) == (400, "n", "invalid_value", "Bad n.")


def test_what_does_not_exist_is_a_404():
    error = http_error(NotFound("No LoRA 'x' is loaded.", param="lora_name", code="lora_not_found"))
    assert (error.status, error.type, error.param, error.code) == (
        404,
        "not_found_error",
        "lora_name",
        "lora_not_found",
    )


def test_internal_error_hides_details_and_stops_sdk_retries():
    response = error_response(internal_error())
    body = json.loads(response.body)
    assert response.status_code == 500
    assert response.headers["x-should-retry"] == "false"
    assert body["error"]["type"] == "server_error"
    assert "Traceback" not in body["error"]["message"]
