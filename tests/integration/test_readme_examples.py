"""The README's curl and SDK examples, run verbatim against a real server (only the port differs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README_URL = "http://localhost:3000"


def readme_example(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- example: {name} -->\n```\w+\n(.*?)```", readme, re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


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


@pytest.mark.parametrize("name", ["curl-single", "curl-multi"])
def test_curl_examples(server, workdir, name):
    command = readme_example(name).replace(README_URL, server.url)
    completed = subprocess.run(
        ["bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=120, check=True
    )
    image = wait_for_image(workdir / "gift-basket.png")
    assert image.format == "PNG" and image.size == (256, 256)
    header = re.search(r"x-request-id: (req_[0-9a-f]{32})", completed.stderr, re.I)
    assert header, completed.stderr
    assert server.wait_for_log(f"[{header.group(1)}] POST /v1/images/edits status=200")


def test_openai_sdk_example(server, workdir):
    script = readme_example("openai-sdk").replace(README_URL, server.url)
    subprocess.run([sys.executable, "-c", script], cwd=workdir, check=True, timeout=120)
    image = wait_for_image(workdir / "edit_out_http.jpeg")
    assert image.format == "JPEG" and image.size == (256, 256)


def test_openai_streaming_example(server, workdir):
    script = readme_example("openai-stream").replace(README_URL, server.url)
    subprocess.run([sys.executable, "-c", script], cwd=workdir, check=True, timeout=120)
    assert wait_for_image(workdir / "snow.png").size == (256, 256)
    assert [wait_for_image(workdir / f"preview-{index}.png").size for index in range(2)] == [(256, 256)] * 2
