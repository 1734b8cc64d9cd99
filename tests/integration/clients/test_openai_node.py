"""The official ``openai`` package for Node.js (7.59, from package-lock.json here) against a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import gradient_png
from tests.integration.clients.shapes import left_half_mask

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent / "node"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "openai").is_dir():
        if os.environ.get("REQUIRE_NODE"):
            pytest.fail("Node.js or the node client's packages are missing (`make install` runs `npm ci` there)")
        pytest.skip("Node.js or the node client's packages are missing")
    return node


@pytest.fixture(scope="module")
def node_results(server, tmp_path_factory):
    node = node_binary()
    files = tmp_path_factory.mktemp("node")
    (files / "image.png").write_bytes(gradient_png(64, 64))
    (files / "mask.png").write_bytes(left_half_mask(64, 64))
    env = {**os.environ, "IMGEDIT_URL": server.url, "IMAGE": str(files / "image.png"), "MASK": str(files / "mask.png")}
    done = subprocess.run([node, "edits.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_file_stream_with_headers(node_results):
    result = node_results["file"]
    assert (result["count"], result["size"], result["quality"], result["outputFormat"]) == (1, "64x64", "high", "png")
    assert result["seeds"] == "7" and result["totalTokens"] > 0 and result["bytes"][0] > 0


def test_a_list_goes_as_image_brackets_and_n_two(node_results):
    assert (node_results["list"]["count"], node_results["list"]["size"]) == (2, "64x64")


def test_a_buffer_through_to_file_and_jpeg(node_results):
    assert node_results["buffer"]["outputFormat"] == "jpeg"
    assert node_results["buffer"]["size"] == "64x64"  # size=auto on the tiny model: its 64x64 native area


def test_a_mask(node_results):
    assert node_results["mask"]["count"] == 1


def test_streaming_events_in_order(node_results):
    assert node_results["stream"]["types"] == ["image_edit.partial_image", "image_edit.completed"]


def test_links_open_from_node(node_results):
    result = node_results["url"]
    assert result["inline"] is None and result["status"] == 200
    assert result["type"] == "image/png" and result["bytes"] > 0


def test_errors_are_the_sdks_own_with_the_servers_message(node_results):
    error = node_results["badSize"]
    assert (error["error"], error["status"]) == ("BadRequestError", 400)
    assert "Invalid size format: '1024x'" in error["message"]


def test_the_model_list(node_results):
    assert node_results["models"]["models"] == ["qwen-image-edit-plus"]


def test_the_sdk_picks_each_of_several_models(catalog, tmp_path):
    """A server of several models: the listed models say which are on the device, and ``model`` picks one, a LoRA's
    name its model."""
    (tmp_path / "image.png").write_bytes(gradient_png(64, 64))
    env = {**os.environ, "IMGEDIT_URL": catalog.url, "IMAGE": str(tmp_path / "image.png")}
    env["MODELS"] = "flux2-klein,anime"
    done = subprocess.run([node_binary(), "models.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    models = [entry for entry in results["listed"] if entry["onDevice"] is not None]
    assert "flux2-klein" in [entry["id"] for entry in models] and any(entry["onDevice"] for entry in models)
    assert [edit["model"] for edit in results["edits"]] == ["flux2-klein", "anime"]
    assert all(edit["bytes"] > 0 for edit in results["edits"])
    assert catalog.wait_for_log("lora=anime:1")
