"""Start-up of ``bentoml serve``: configuration and model problems stop it with one clear line."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.integration.conftest import ROOT, free_port, serve_command, server_environment, stop

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
    assert result.returncode is not None
    assert f"imgedit: cannot load model '{broken}'" in result.stdout
    assert result.stdout.count("imgedit: cannot load model") == 1  # stopped, not restarted over and over


def test_ready_only_after_the_warm_up(server):
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert "serving tiny:qwen-image-edit-plus as 'qwen-image-edit-plus'" in server.log()
    assert httpx.get(f"{server.url}/livez").status_code == 200
