"""Real servers running each edit on two gloo ranks on the CPU: ``IMGEDIT_ULYSSES_DEGREE=2``, ``IMGEDIT_CFG_PARALLEL``.

Compared with the one-rank server the other integration tests share: the same
pictures within ``TOLERANCE`` levels, streaming, cancellation and metrics on
both; a rank out of memory, and a rank killed mid-run (last: it ends the
server), on the Ulysses one. Runs are held
at a step with the file gate of the test hooks (``devtools/test_hooks.py``, in
both ranks; the rank faults in the extra rank alone), never timed with sleeps.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import psutil
import pytest
from PIL import Image

from devtools.server import Server, start_server, stop
from tests.helpers import edits_request_head, gradient_png, multipart_body

pytestmark = pytest.mark.integration

#: The most a pixel of a 2-rank edit may differ from the 1-rank edit, per channel (see docs/parallel.md, "Pictures").
TOLERANCE = 2
GATE_STEP = 3
OOM = "rank 1 runs out of memory"
EDIT = {"prompt": "a bear with a hat", "seed": "77", "n": "2", "size": "64x64"}


def ranked_server(directory: Path, **settings: str) -> Server:
    server = start_server(
        directory,
        IMGEDIT_DEVICE="cpu",
        hooks=True,
        TEST_STEP_GATE=str(directory / "gate"),
        TEST_STEP_GATE_AT=str(GATE_STEP),
        TEST_RANK_OOM_PROMPT=OOM,
        **settings,
    )
    server.gate = directory / "gate"  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    server = ranked_server(tmp_path_factory.mktemp("two-ranks"), IMGEDIT_ULYSSES_DEGREE="2")
    yield server
    stop(server.process)


#: Speed tiers for the guidance-parallel server: guidance off, and guidance cut short with a step cache.
PRESETS = """
low: {num_inference_steps: 2, true_cfg_scale: 1.0}
medium: {num_inference_steps: 4, cfg_until: 0.5, cache: taylorseer, cache_interval: 2}
"""


@pytest.fixture(scope="module")
def cfg_ranks(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cfg-ranks")
    (directory / "presets.yaml").write_text(PRESETS)
    server = ranked_server(directory, IMGEDIT_CFG_PARALLEL="true", IMGEDIT_PRESETS=str(directory / "presets.yaml"))
    yield server
    stop(server.process)


@pytest.fixture(params=["two_ranks", "cfg_ranks"])
def ranks(request):
    """Each of the two servers in turn: Ulysses, then guidance's branches on two ranks."""
    return request.getfixturevalue(request.param)


def edit(url: str, **fields: str) -> httpx.Response:
    images = [("image", gradient_png(64, 64)), ("image", gradient_png(48, 80))]
    return httpx.post(f"{url}/v1/images/edits", files=images, data={**EDIT, **fields}, timeout=120)


def pictures(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [decoded(item["b64_json"]) for item in response.json()["data"]]


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=int)


def extra_ranks(server: Server) -> list[psutil.Process]:
    processes = psutil.Process(server.process.pid).children(recursive=True)
    return [process for process in processes if "imgedit.ranks.main" in " ".join(process.cmdline())]


def gone(process: psutil.Process) -> bool:
    """Whether ``process`` has ended (a zombie waiting for its parent to read its status has)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def metric(url: str, name: str) -> str:
    match = re.search(rf"^{name}(\{{.*\}})? (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    assert match, f"{name} not in /metrics"
    return match.group(0)


def test_two_ranks_make_the_pictures_of_one(ranks, server):
    # Qwen-Image-Edit-Plus: two input images, true CFG (its default true_cfg_scale 4), two images of two calls.
    split, alone = pictures(edit(ranks.url)), pictures(edit(server.url))
    assert len(split) == len(alone) == 2
    for one, other in zip(split, alone, strict=True):
        assert np.abs(one - other).max() <= TOLERANCE


def test_streaming_gives_previews_and_the_same_images(ranks):
    client = openai.OpenAI(api_key="x", base_url=f"{ranks.url}/v1", max_retries=0)
    stream = client.images.edit(
        image=[gradient_png(64, 64), gradient_png(48, 80)],
        prompt=EDIT["prompt"],
        n=2,
        size="64x64",
        stream=True,
        partial_images=2,
        extra_body={"seed": int(EDIT["seed"])},
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds.count("image_edit.partial_image") == 4 and kinds.count("image_edit.completed") == 2
    streamed = [decoded(event.b64_json) for event in events if event.type == "image_edit.completed"]
    for one, other in zip(streamed, pictures(edit(ranks.url)), strict=True):
        assert np.array_equal(one, other)


def test_a_client_that_leaves_stops_both_ranks_at_the_same_step(ranks):
    gate, reached = ranks.gate, Path(f"{ranks.gate}.reached")
    gate.unlink(missing_ok=True)
    reached.unlink(missing_ok=True)
    address = urlsplit(ranks.url)
    body, content_type = multipart_body(
        [("image", gradient_png(64, 64), "a.png"), ("prompt", b"gated", None), ("num_inference_steps", b"200", None)]
    )
    head = edits_request_head(address.netloc, content_type, len(body), x_request_id="leaves-two-ranks")
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(head + body)
        while not reached.exists():  # both ranks are held at step GATE_STEP
            time.sleep(0.02)
    assert ranks.wait_for_log("[leaves-two-ranks] client disconnected; stopping its edit")
    gate.touch()
    after = f"after step {GATE_STEP + 1}/200"
    assert ranks.wait_for_log(f"[leaves-two-ranks] stopped mid-run (disconnect) {after}")
    assert ranks.wait_for_log(f"[leaves-two-ranks] rank 1 left the call {after}: rank 0 stopped it")
    assert pictures(edit(ranks.url, n="1"))


def test_another_rank_out_of_memory_fails_only_that_request(two_ranks):
    failed = edit(two_ranks.url, prompt=OOM, n="1")
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "out_of_memory"
    assert two_ranks.wait_for_log("rank 1 left the call after step 1/4: rank 1 ran out of device memory")
    assert pictures(edit(two_ranks.url, n="1"))


def test_metrics_say_how_many_ranks_run_each_edit(two_ranks, cfg_ranks, server):
    assert metric(two_ranks.url, "imgedit_parallel_degree").endswith(" 2.0")
    assert 'options="ulysses=2"' in metric(two_ranks.url, "imgedit_model_info")
    assert metric(cfg_ranks.url, "imgedit_parallel_degree").endswith(" 2.0")
    assert 'options="cfg=2"' in metric(cfg_ranks.url, "imgedit_model_info")
    assert metric(server.url, "imgedit_parallel_degree").endswith(" 1.0")


def test_each_denoiser_call_counts_once_whichever_rank_runs_it(cfg_ranks, server):
    def calls_made(url: str) -> float:
        before = float(metric(url, "imgedit_denoiser_calls_total").split()[-1])
        pictures(edit(url))
        return float(metric(url, "imgedit_denoiser_calls_total").split()[-1]) - before

    # Two images of 4 steps, each step a conditional and an unconditional call.
    assert calls_made(cfg_ranks.url) == calls_made(server.url) == 16


def test_speed_tiers_switch_per_request_on_both_groups_of_ranks(cfg_ranks, server):
    client = openai.OpenAI(api_key="x", base_url=f"{cfg_ranks.url}/v1", max_retries=0)

    def calls_made(quality: str) -> tuple[float, openai.types.ImagesResponse]:
        before = float(metric(cfg_ranks.url, "imgedit_denoiser_calls_total").split()[-1])
        answer = client.images.edit(
            image=gradient_png(64, 64),
            prompt="a hat",
            size="64x64",
            quality=quality,
            extra_body={"seed": 5},
        )
        return float(metric(cfg_ranks.url, "imgedit_denoiser_calls_total").split()[-1]) - before, answer

    # low: 2 steps without guidance; medium: guidance on 2 of 4 steps; high: the server's own 4 guided steps.
    (low_calls, low), (medium_calls, medium), (high_calls, high) = map(calls_made, ("low", "medium", "high"))
    assert (low_calls, medium_calls, high_calls) == (2, 6, 8)
    assert (low.quality, medium.quality, high.quality) == ("low", "medium", "high")
    alone = edit_one(server.url, num_inference_steps="2", true_cfg_scale="1")
    assert np.abs(decoded(low.data[0].b64_json) - alone).max() <= TOLERANCE


def edit_one(url: str, **fields: str) -> np.ndarray:
    fields = {"prompt": "a hat", "size": "64x64", "seed": "5", **fields}
    response = httpx.post(f"{url}/v1/images/edits", files=[("image", gradient_png(64, 64))], data=fields, timeout=120)
    (picture,) = pictures(response)
    return picture


def test_a_rank_killed_mid_run_stops_the_server_with_one_line(two_ranks):
    # Last: it ends the server.
    gate, reached = two_ranks.gate, Path(f"{two_ranks.gate}.reached")
    gate.unlink(missing_ok=True)
    reached.unlink(missing_ok=True)
    (rank,) = extra_ranks(two_ranks)
    worker = two_ranks.worker()
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(edit, two_ranks.url, prompt="gated", n="1")
        while not reached.exists():  # both ranks are held at step GATE_STEP
            time.sleep(0.02)
        rank.kill()
        try:
            answered = running.result(timeout=120).status_code
        except httpx.HTTPError:
            answered = None  # the worker went away mid-answer
    assert answered != 200
    assert two_ranks.process.wait(timeout=120) == 1
    line = "imgedit: rank 1 of worker 0 was killed by SIGKILL; stopping the server"
    assert two_ranks.log().count(line) == 1
    assert two_ranks.log().count("imgedit: ") == 1  # no other fatal line
    assert gone(worker) and gone(rank)
