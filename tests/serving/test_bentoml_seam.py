"""The seam to BentoML: these fail when a BentoML upgrade changes what imgedit relies on."""

from __future__ import annotations

import subprocess
import sys

import bentoml
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from imgedit.api.responses import ImagesResponse
from imgedit.serving.bentoml_seam import FAILURE_FILE_VARIABLE, RawRequestInput, raw_request_input, worker_index

SCHEMA = {"type": "object", "title": "SeamForm", "properties": {"word": {"type": "string", "maxLength": 9}}}
JSON_SCHEMA = {"type": "object", "title": "SeamJson", "properties": {"count": {"type": "integer", "maximum": 3}}}


@bentoml.service(name="seam-probe")
class SeamProbe:
    """Answers with what it received: the body, unread by BentoML, and its content type."""

    @bentoml.api(
        route="/v1/probe",
        input_spec=raw_request_input({"multipart/form-data": SCHEMA, "application/json": JSON_SCHEMA}),
        output_spec=ImagesResponse,
    )
    async def probe(self, connection: Request) -> Response:
        body = await connection.body()
        return Response(
            body, media_type="application/octet-stream", headers={"x-type": connection.headers["content-type"]}
        )


@pytest.fixture(scope="module")
def client():
    # BentoML registers its metrics once per process, so the app is built once.
    with TestClient(SeamProbe.to_asgi()) as client:
        yield client


def test_the_descriptor_overrides_bentomls_request_hook():
    from _bentoml_sdk.io_models import IOMixin

    assert RawRequestInput.from_http_request.__func__ is not IOMixin.from_http_request.__func__


def test_the_api_function_gets_the_request_with_its_body_unread(client):
    malformed = b"--nope\r\nnot a form at all\xff\xfe"  # BentoML's own parsing would refuse this
    response = client.post(
        "/v1/probe", content=malformed, headers={"content-type": "multipart/form-data; boundary=nope"}
    )
    assert response.status_code == 200
    assert response.content == malformed
    assert response.headers["x-type"] == "multipart/form-data; boundary=nope"


def test_the_openapi_document_shows_every_declared_body(client):
    document = client.get("/docs.json").json()
    content = document["paths"]["/v1/probe"]["post"]["requestBody"]["content"]
    assert list(content) == ["multipart/form-data", "application/json"]
    for media_type, declared in (("multipart/form-data", SCHEMA), ("application/json", JSON_SCHEMA)):
        schema = content[media_type]["schema"]
        if "$ref" in schema:  # BentoML may put it among the components
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        assert schema["properties"] == declared["properties"]
    assert "connection" not in str(document)  # the descriptor's own field is never documented


def test_the_openapi_document_shows_the_one_declared_response_body(client):
    document = client.get("/docs.json").json()
    schema = document["paths"]["/v1/probe"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert list(schema["properties"]) == list(ImagesResponse.model_fields)


def test_worker_index_counts_from_zero(monkeypatch):
    assert worker_index() == 0  # outside `bentoml serve`
    monkeypatch.setattr(bentoml.server_context, "worker_index", 3)
    assert worker_index() == 2


def test_a_recorded_worker_failure_makes_the_serving_process_exit_with_status_1(tmp_path):
    script = f"""
import os, pathlib
from imgedit.serving.bentoml_seam import arrange_exit_status
arrange_exit_status()
pathlib.Path(os.environ["{FAILURE_FILE_VARIABLE}"]).write_text("worker failed")
"""
    failed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    clean = subprocess.run(
        [sys.executable, "-c", "from imgedit.serving.bentoml_seam import arrange_exit_status; arrange_exit_status()"],
        capture_output=True,
        timeout=60,
    )
    assert (failed.returncode, clean.returncode) == (1, 0), failed.stderr
