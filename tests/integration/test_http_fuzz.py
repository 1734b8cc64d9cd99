"""A seeded stream of mutated requests against a real server: a 200 or an OpenAI-shaped 4xx, every time.

The requests come from :class:`devtools.mutations.RequestMutator` (valid
multipart and JSON edits, bent one to three ways). Every 50th request is a
valid edit, which must succeed however the requests before it went; after
the stream the server is still ready and its log holds no traceback.
"""

from __future__ import annotations

import json

import httpx
import pytest

from devtools.mutations import FuzzRequest, RequestMutator, valid_json, valid_multipart
from devtools.server import start_server, stop

pytestmark = pytest.mark.integration

SEED = 20261205
REQUESTS = 600
VALID_EVERY = 50
#: Small limits, so that a mutation that keeps a request valid cannot ask for a long run.
SETTINGS = {
    "IMGEDIT_MAX_SIDE": "128",
    "IMGEDIT_MAX_OUTPUT_PIXELS": str(128 * 128),
    "IMGEDIT_MAX_BODY_BYTES": str(1024 * 1024),
    "IMGEDIT_URL_FETCH": "false",
}
ERROR_TYPES = {404: "not_found_error", 429: "rate_limit_error"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("http-fuzz"), **SETTINGS)
    yield running
    stop(running.process)


def problem_with(response: httpx.Response) -> str | None:
    """What is wrong with ``response`` to a fuzzed request, or None: a 200 edit or a 4xx in OpenAI's shape."""
    status, content_type = response.status_code, response.headers.get("content-type", "")
    if status == 200:
        if content_type.startswith("text/event-stream"):
            return "a server_error event in the stream" if '"server_error"' in response.text else None
        data = response.json().get("data")
        return None if isinstance(data, list) and data and all(item.get("b64_json") for item in data) else "no images"
    if not 400 <= status < 500:
        return f"status {status}"
    if not content_type.startswith("application/json"):
        return f"{status} with content type {content_type!r}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without an error object"
    if set(error) != {"message", "type", "param", "code"} or not isinstance(error["message"], str):
        return f"{status} with error keys {sorted(error)}"
    if error["type"] != ERROR_TYPES.get(status, "invalid_request_error") or not error["message"]:
        return f"{status} with type {error['type']!r}"
    return None


def send(http: httpx.Client, request: FuzzRequest) -> httpx.Response:
    headers = {"content-type": request.content_type} if request.content_type else {}
    return http.post("/v1/images/edits", content=request.body, headers=headers)


def test_mutated_requests_get_a_200_or_a_4xx_and_valid_edits_keep_succeeding(server):
    mutator = RequestMutator(SEED)
    problems, statuses, valid = [], {}, []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for index in range(REQUESTS):
            if index % VALID_EVERY == 0:
                request = (valid_json if index % (2 * VALID_EVERY) else valid_multipart)(index)
                valid.append(send(http, request).status_code)
                continue
            request = mutator.next()
            response = send(http, request)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            problem = problem_with(response)
            if problem is not None:
                body = request.body[:200]
                problems.append(f"#{index} {request.mutations} {request.content_type!r} {body!r}: {problem}")
        ready = http.get("/readyz").status_code
    print(f"statuses of {REQUESTS - len(valid)} mutated requests: {json.dumps(dict(sorted(statuses.items())))}")
    assert problems == []
    assert valid == [200] * len(valid)
    assert ready == 200
    assert "Traceback" not in server.log()
    # The stream reaches past the body readers (some mutated requests stay valid enough to run) and is refused
    # at more than one place.
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0 and len(statuses) >= 3
