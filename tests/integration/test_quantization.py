"""A real ``bentoml serve`` of a saved tiny pipeline with IMGEDIT_QUANTIZE=int8, and fp8's refusal on a CPU."""

from __future__ import annotations

import re

import httpx
import pytest
import torch

from devtools.server import start_server, stop
from imgedit.model.tiny import build_tiny
from imgedit.weights.memory import component_bytes, footprint
from tests.helpers import small_edit
from tests.integration.test_startup import run_until_exit

pytestmark = pytest.mark.integration


def test_a_saved_pipeline_is_served_with_int8_weights_and_their_bytes_are_exported(tmp_path):
    tiny = build_tiny("tiny:qwen-image-edit-plus").pipeline
    saved = tmp_path / "saved"
    tiny.save_pretrained(saved)
    expected = {
        "transformer": component_bytes(footprint(tiny.transformer), torch.float32, "int8"),
        "text_encoder": component_bytes(footprint(tiny.text_encoder), torch.float32),
    }
    server = start_server(tmp_path, IMGEDIT_MODEL=str(saved), IMGEDIT_QUANTIZE="int8")
    try:
        response = small_edit(server.url)
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        exported = {
            component: float(value)
            for component, value in re.findall(
                r'^imgedit_model_parameter_bytes\{component="(\w+)"\} (\S+)$', metrics, re.M
            )
        }
        assert {component: exported[component] for component in expected} == expected
        assert exported["transformer"] < 0.6 * component_bytes(footprint(tiny.transformer), torch.float32)
        assert "quantize=int8:transformer" in server.log()
    finally:
        stop(server.process)


def test_fp8_on_a_cpu_stops_start_up_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CPU-only refusal")
    result = run_until_exit(tmp_path, IMGEDIT_QUANTIZE="fp8", IMGEDIT_DEVICE="cpu")
    assert result.returncode != 0
    assert result.stdout.strip().splitlines() == [
        "imgedit: IMGEDIT_QUANTIZE: 'fp8' needs an NVIDIA GPU with FP8 support (compute capability 8.9 or newer), "
        "and this device is cpu; 'int8' runs here"
    ]
