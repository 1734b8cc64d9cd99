"""Start-up of ``bentoml serve``: configuration and model problems stop it with one clear line."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from devtools.server import ROOT, free_port, serve_command, server_environment, stop

pytestmark = pytest.mark.integration


def run_until_exit(tmp_path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        serve_command(free_port()),
        cwd=ROOT,
        env=server_environment(tmp_path, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail("bentoml serve did not stop on a start-up error")
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def test_a_bad_variable_stops_start_up_with_one_line(tmp_path):
    result = run_until_exit(tmp_path, IMGEDIT_MAX_IMAGES="lots")
    assert result.returncode != 0
    assert result.stdout.strip().splitlines() == [
        "imgedit: IMGEDIT_MAX_IMAGES: Input should be a valid integer, "
        "unable to parse string as an integer (got 'lots')"
    ]


def test_an_unavailable_default_model_says_how_to_use_the_tiny_one(tmp_path):
    result = run_until_exit(tmp_path, IMGEDIT_MODEL="Qwen/Qwen-Image-Edit-2511")
    lines = result.stdout.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, result.stdout
    assert "cannot load model 'Qwen/Qwen-Image-Edit-2511'" in lines[0]
    assert "IMGEDIT_MODEL=tiny:qwen-image-edit-plus" in lines[0]


def test_a_model_that_fails_to_load_in_the_worker_stops_the_server(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text(
        json.dumps({"_class_name": "QwenImageEditPlusPipeline", "vae": ["diffusers", "AutoencoderKLQwenImage"]})
    )
    result = run_until_exit(tmp_path, IMGEDIT_MODEL=str(broken))
    assert result.returncode == 1
    assert f"imgedit: cannot load model '{broken}'" in result.stdout
    assert result.stdout.count("imgedit: cannot load model") == 1  # stopped, not restarted over and over


def test_asking_for_cuda_without_one_stops_start_up(tmp_path):
    result = run_until_exit(tmp_path, IMGEDIT_DEVICE="cuda")
    assert result.returncode != 0
    assert result.stdout.strip().splitlines() == [
        "imgedit: IMGEDIT_DEVICE: 'cuda' was asked for, but no CUDA device is available"
    ]


def test_ready_only_after_the_warm_up(tmp_path):
    gate = tmp_path / "gate"
    port = free_port()
    environment = server_environment(tmp_path, hooks=True, TEST_WARMUP_GATE=str(gate))
    process = subprocess.Popen(
        serve_command(port), cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{gate}.reached").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the warm-up never started"
            time.sleep(0.1)
        for _ in range(10):  # loaded but not warmed up: never ready
            assert _ready_status(url) != 200
            time.sleep(0.1)
        gate.touch()
        while _ready_status(url) != 200:
            assert process.poll() is None and time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        assert httpx.get(f"{url}/livez").status_code == 200
    finally:
        stop(process)


def _ready_status(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code
    except httpx.HTTPError:
        return None
