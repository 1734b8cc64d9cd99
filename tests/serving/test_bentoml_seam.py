"""The seam to BentoML: these fail when a BentoML upgrade changes what imgedit relies on."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import psutil
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from imgedit.api.responses import ImagesResponse
from imgedit.serving.bentoml_seam import (
    FAILURE_FILE_VARIABLE,
    METRICS_FOLDER_PREFIX,
    SERVER_PID_VARIABLE,
    RawRequestInput,
    _remove_abandoned_metrics_folders,
    raw_request_input,
    worker_index,
)

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


def test_bentoml_keeps_the_metrics_in_the_folder_the_server_made_which_goes_when_it_exits(tmp_path):
    script = """
from bentoml.serving import ensure_prometheus_dir
from imgedit.serving.bentoml_seam import own_metrics_folder
print(own_metrics_folder())
print(ensure_prometheus_dir())
"""
    environment = {**os.environ, "TMPDIR": str(tmp_path), "BENTOML_HOME": str(tmp_path / "home")}
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=60)
    assert ran.returncode == 0, ran.stderr
    made, used = ran.stdout.split()
    assert made == used and Path(made).parent.parent == tmp_path
    assert not Path(made).parent.exists()
    assert not (tmp_path / "home" / "prometheus_multiproc_dir").exists()  # BentoML's shared one is left alone


def test_a_new_server_removes_the_metrics_folders_of_servers_gone_and_only_those(tmp_path):
    def folder(name: str, lock: str | None) -> Path:
        home = tmp_path / f"{METRICS_FOLDER_PREFIX}{name}"
        (home / "prometheus").mkdir(parents=True)
        if lock is not None:
            (home / "lock").write_text(lock)
        return home

    gone, live, being_made, foreign = (
        folder("gone", "41\n"),
        folder("live", "42\n"),
        folder("new", ""),  # locked by its server but not yet written
        folder("x", None),  # no lock file: not a server's (or not this user's)
    )
    with (live / "lock").open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _remove_abandoned_metrics_folders(tmp_path)
    assert not gone.exists()
    assert live.exists() and being_made.exists() and foreign.exists()


def test_a_worker_whose_server_is_killed_kills_its_process_group(tmp_path):
    """The guard that does not rely on the kernel's parent-death signal: the thread that follows the server."""
    pids = tmp_path / "pids"
    worker = f"""
import os, pathlib, subprocess, threading, time
from imgedit.serving.bentoml_seam import SERVER_PID_VARIABLE, follow_server
rank = subprocess.Popen(["sleep", "600"])
threading.Thread(target=follow_server, args=(int(os.environ[SERVER_PID_VARIABLE]), 0.1), daemon=True).start()
pathlib.Path({str(pids)!r}).write_text(f"{{os.getpid()}} {{rank.pid}}")
time.sleep(600)
"""
    server = f"""
import os, subprocess, sys, time
os.environ[{SERVER_PID_VARIABLE!r}] = str(os.getpid())
subprocess.Popen([sys.executable, "-c", {worker!r}], start_new_session=True)  # as circus starts a worker
time.sleep(600)
"""
    process = subprocess.Popen([sys.executable, "-c", server], start_new_session=True)
    followers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not pids.exists() or len(pids.read_text().split()) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "the worker did not start"
            time.sleep(0.05)
        followers = [psutil.Process(int(pid)) for pid in pids.read_text().split()]
        process.kill()
        process.wait()
        deadline = time.monotonic() + 20
        while not all(_ended(follower) for follower in followers):
            assert time.monotonic() < deadline, "the worker or its rank outlived the server"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for follower in followers:
            with contextlib.suppress(psutil.Error):
                follower.kill()


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
