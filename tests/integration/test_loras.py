"""LoRA adapters on a real server with two workers: listed as models, chosen per request, loaded and unloaded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devtools.lora_files import write_lora
from devtools.server import start_server, stop
from imgedit.model.tiny import build_tiny
from tests.helpers import small_edit

pytestmark = pytest.mark.integration

USER, ADMIN = "sk-user", "sk-admin"
#: A family whose pipeline keeps a small reference small (Qwen's resizes it to 1 MP once served from a directory).
TINY = "flux2-klein"


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    """``imgedit export-tiny`` writes the model it serves; two workers; ``ink`` registered at start-up.

    Served from a directory, the tiny model has a real model's defaults (50 steps, 1 MP for
    ``size=auto``), so every edit here names its size and steps.
    """
    tmp = tmp_path_factory.mktemp("lora")
    model = tmp / "model"
    exported = subprocess.run(
        [sys.executable, "-m", "imgedit.cli", "export-tiny", TINY, str(model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    assert f"IMGEDIT_MODEL={model}" in exported.stdout
    pipeline = build_tiny(f"tiny:{TINY}").pipeline
    loras = tmp / "loras"
    write_lora(pipeline, loras / "ink", seed=1)
    write_lora(pipeline, loras / "light", seed=2)
    server = start_server(
        tmp,
        IMGEDIT_MODEL=str(model),
        IMGEDIT_WORKERS="2",
        IMGEDIT_LORA_DIR=str(loras),
        IMGEDIT_LORA_ADAPTERS=f"ink={loras / 'ink'}:0.8",
        IMGEDIT_MAX_LORAS="2",
        IMGEDIT_API_KEY=USER,
        IMGEDIT_ADMIN_KEY=ADMIN,
    )
    yield server
    stop(server.process)


def post(server, path: str, key: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def edit(server, **fields: str) -> httpx.Response:
    return small_edit(server.url, headers={"Authorization": f"Bearer {USER}"}, seed="3", **fields)


def model_ids(server) -> list[str]:
    answer = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {USER}"}, timeout=60)
    return [card["id"] for card in answer.json()["data"]]


def test_registered_loras_are_models_on_top_of_the_base(lora_server):
    answer = httpx.get(f"{lora_server.url}/v1/models", headers={"Authorization": f"Bearer {USER}"}, timeout=60)
    cards = {card["id"]: card for card in answer.json()["data"]}
    base = next(card for card in cards.values() if card["parent"] is None)
    assert (cards["ink"]["parent"], cards["ink"]["root"]) == (base["id"], base["id"])
    plain, inked, by_model = edit(lora_server), edit(lora_server, lora="ink:0.8"), edit(lora_server, model="ink")
    assert plain.status_code == inked.status_code == by_model.status_code == 200
    assert plain.json()["data"][0]["b64_json"] != inked.json()["data"][0]["b64_json"]
    assert inked.json()["data"][0]["b64_json"] == by_model.json()["data"][0]["b64_json"]


def test_the_lora_endpoints_need_the_admin_key(lora_server):
    for key in (USER, "wrong"):
        refused = post(lora_server, "/load_lora_adapter", key, lora_name="light", lora_path="light")
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
    bare = httpx.post(f"{lora_server.url}/v1/unload_lora_adapter", json={"lora_name": "ink"}, timeout=60)
    assert bare.status_code == 401


def test_load_reaches_both_workers_and_unload_refuses_it_everywhere(lora_server):
    outside = post(lora_server, "/load_lora_adapter", ADMIN, lora_name="x", lora_path="../model/transformer")
    assert (outside.status_code, outside.json()["error"]["param"]) == (400, "lora_path")
    loaded = post(lora_server, "/load_lora_adapter", ADMIN, lora_name="light", lora_path="light")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"object": "lora_adapter", "lora_name": "light", "status": "loaded", "workers": 2}
    full = post(lora_server, "/load_lora_adapter", ADMIN, lora_name="more", lora_path="light")
    assert (full.status_code, full.json()["error"]["code"]) == (400, "too_many_adapters")
    for _ in range(4):  # whichever worker answers
        assert "light" in model_ids(lora_server)
        assert edit(lora_server, lora="light").status_code == 200
    unloaded = post(lora_server, "/unload_lora_adapter", ADMIN, lora_name="light")
    assert (unloaded.status_code, unloaded.json()["workers"]) == (200, 2)
    for _ in range(4):
        refused = edit(lora_server, lora="light")
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "lora_not_found")
    assert post(lora_server, "/unload_lora_adapter", ADMIN, lora_name="light").status_code == 404


def test_without_an_admin_key_the_endpoints_do_not_exist(server):
    answer = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "a"}, timeout=60)
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found")


def test_sigterm_answers_a_lora_command_still_waiting_and_the_server_exits(tmp_path):
    # The command waits for the engine, held at a step by a gated edit; the SIGTERM must not wait for it
    # (nor, with several workers, for workers that are stopping and will never acknowledge it).
    gate, loras = tmp_path / "gate", tmp_path / "loras"
    write_lora(build_tiny("tiny:qwen-image-edit-plus").pipeline, loras / "ink", seed=1)
    server = start_server(
        tmp_path, hooks=True, TEST_STEP_GATE=str(gate), IMGEDIT_LORA_DIR=str(loras), IMGEDIT_ADMIN_KEY=ADMIN
    )
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            held = pool.submit(small_edit, server.url, prompt="gated")
            while not Path(f"{gate}.reached").exists():
                time.sleep(0.02)
            load = pool.submit(post, server, "/load_lora_adapter", ADMIN, lora_name="ink", lora_path="ink")
            while not any(log.stat().st_size for log in server.tmp_dir.glob("imgedit-lora-*/commands.jsonl")):
                time.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
            answer = load.result(timeout=60)  # before the gate opens: the engine is still held
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "server_shutting_down" and answer.headers["retry-after"]
            gate.touch()
            assert held.result(timeout=60).status_code == 200
        assert server.process.wait(timeout=60) == 0
    finally:
        gate.touch()
        stop(server.process)
