"""The curl, SDK and make examples of the README and the docs, run verbatim against a real server (only the port
differs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devtools.server import serve_on_a_free_port, server_environment, stop
from tests.test_docs import blocks

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS_URL = "http://localhost:3000"


def example(name: str) -> str:
    (code,) = {code for _, marker, code in blocks() if marker == f"example: {name}"}
    return code


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def wait_for_image(path: Path, seconds: float = 30) -> Image.Image:
    """The curl examples decode through a process substitution that may finish after curl exits."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            image = Image.open(path)
            image.load()
            return image
        except (OSError, SyntaxError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_bash(code: str, server, workdir: Path) -> subprocess.CompletedProcess[str]:
    command = code.replace(DOCS_URL, server.url)
    return subprocess.run(["bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=120, check=True)


def run_python(code: str, server, workdir: Path) -> None:
    subprocess.run([sys.executable, "-c", code.replace(DOCS_URL, server.url)], cwd=workdir, check=True, timeout=120)


@pytest.mark.parametrize("name", ["curl-single", "curl-multi"])
def test_curl_examples(server, workdir, name):
    completed = run_bash(example(name), server, workdir)
    image = wait_for_image(workdir / "gift-basket.png")
    assert image.format == "PNG" and image.size == (256, 256)
    header = re.search(r"x-request-id: (req_[0-9a-f]{32})", completed.stderr, re.I)
    assert header, completed.stderr
    assert server.wait_for_log(f"[{header.group(1)}] POST /v1/images/edits status=200")


def test_curl_json_example(server, workdir):
    run_bash(example("curl-json"), server, workdir)
    assert wait_for_image(workdir / "snow.png").size == (256, 256)


def test_curl_stream_example(server, workdir):
    events = run_bash(example("curl-stream"), server, workdir).stdout.split()
    assert events == ["event:", "image_edit.partial_image", "event:", "image_edit.completed"]


def test_openai_sdk_example(server, workdir):
    run_python(example("openai-sdk"), server, workdir)
    image = wait_for_image(workdir / "edit_out_http.jpeg")
    assert image.format == "JPEG" and image.size == (256, 256)


def test_openai_sdk_file_example(server, workdir):
    run_python(example("openai-sdk-file"), server, workdir)
    assert wait_for_image(workdir / "snow.png").size == (256, 256)


def test_openai_streaming_example(server, workdir):
    run_python(example("openai-stream"), server, workdir)
    assert wait_for_image(workdir / "snow.png").size == (256, 256)
    assert [wait_for_image(workdir / f"preview-{index}.png").size for index in range(2)] == [(256, 256)] * 2


def test_make_serve_serves_the_tiny_model(tmp_path):
    code = example("make-serve")
    command = code.split("#")[0].strip()
    assert command == "make serve"
    environment = server_environment(tmp_path)
    del environment["IMGEDIT_MODEL"]  # what make serve serves by itself
    server = serve_on_a_free_port(lambda port: [*command.split(), f"PORT={port}"], environment, tmp_path / "make.log")
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert [model["id"] for model in models["data"]] == ["qwen-image-edit-plus"]
    finally:
        stop(server.process)


@pytest.mark.parametrize("name", ["openai-url", "openai-job"])
def test_openai_link_and_job_examples(server, workdir, name):
    run_python(example(name), server, workdir)
    assert wait_for_image(workdir / "snow.png").size == (256, 256)


@pytest.mark.parametrize("name", ["curl-url", "curl-job"])
def test_curl_link_and_job_examples(server, workdir, name):
    run_bash(example(name), server, workdir)
    assert wait_for_image(workdir / "snow.png").size == (256, 256)


def test_curl_idempotent_example(server, workdir):
    replays = run_bash(example("curl-idempotent"), server, workdir).stdout.lower().split()
    assert replays == ["idempotent-replayed:", "true"]
