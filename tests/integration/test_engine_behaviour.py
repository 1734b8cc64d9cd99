"""The engine under a real server: backpressure, one run at a time, cancellation, faults, shutdown, metrics.

The server runs the tiny model with a test-only delay per denoising step (the
test hooks of ``devtools/test_hooks.py``), so runs last long enough to be observed.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import pytest

from devtools.server import start_server, stop
from tests.helpers import decode, gradient_png, multipart_body

pytestmark = pytest.mark.integration

STEP_DELAY = 0.05
OOM_PROMPT = "raise-oom"


GATE_STEP = 5


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slow")
    server = start_server(
        directory,
        hooks=True,
        TEST_STEP_DELAY=str(STEP_DELAY),
        TEST_OOM_PROMPT=OOM_PROMPT,
        TEST_STEP_GATE=str(directory / "step-gate"),
        TEST_STEP_GATE_AT=str(GATE_STEP),
        TEST_CONCURRENCY_FILE=str(directory / "most-at-once"),
        IMGEDIT_MAX_QUEUE="4",
        IMGEDIT_PROGRESS_LOG_SECONDS="0.2",
    )
    server.gate = directory / "step-gate"  # type: ignore[attr-defined]
    server.concurrency = directory / "most-at-once"  # type: ignore[attr-defined]
    yield server
    stop(server.process)


def edit(url: str, steps: int = 2, prompt: str = "p", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data={"prompt": prompt, "num_inference_steps": str(steps)},
        headers=headers,
        timeout=120,
    )


def ready_status(url: str) -> int | None:
    """The status of ``/readyz``, or None when the server gives no answer."""
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code
    except httpx.HTTPError:
        return None


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_sixteen_clients_get_answers_and_never_two_runs_at_once(slow_server):
    in_flight_seen: list[float] = []
    done = threading.Event()

    def watch_metrics() -> None:
        while not done.is_set():
            text = httpx.get(f"{slow_server.url}/metrics", timeout=10).text
            in_flight_seen.append(metric(text, "imgedit_runs_in_flight"))

    watcher = threading.Thread(target=watch_metrics)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=16) as clients:
            responses = list(clients.map(lambda _: edit(slow_server.url), range(100)))
    finally:
        done.set()
        watcher.join()
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 429} and len(statuses) == 100
    assert statuses.count(200) >= 5 and statuses.count(429) >= 1
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "rate_limit_error"
        else:
            assert len(response.json()["data"]) == 1
    assert in_flight_seen and max(in_flight_seen) <= 1
    final = httpx.get(f"{slow_server.url}/metrics").text
    assert metric(final, "imgedit_runs_in_flight_max") == 1
    # Counted inside the pipeline call itself, independently of the engine's own bookkeeping.
    assert slow_server.concurrency.read_text() == "1"
    assert metric(final, "imgedit_rejections_total", '{reason="queue_full"}') == statuses.count(429)


def test_a_client_that_disconnects_stops_its_run_at_the_next_step(slow_server):
    address = urlsplit(slow_server.url)
    body, content_type = multipart_body(
        [("image", gradient_png(64, 64), "a.png"), ("prompt", b"gated", None), ("num_inference_steps", b"200", None)]
    )
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nx-request-id: walk-away-1\r\n\r\n"
    ).encode()
    reached = Path(f"{slow_server.gate}.reached")
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(head + body)
        while not reached.exists():  # the run is held at step GATE_STEP
            time.sleep(0.02)
    assert slow_server.wait_for_log("[walk-away-1] client disconnected; stopping its edit")
    slow_server.gate.touch()  # let the held step finish: the next check stops the run
    assert slow_server.wait_for_log(f"[walk-away-1] stopped mid-run (disconnect) after step {GATE_STEP + 1}/200"), (
        slow_server.log()[-2000:]
    )
    assert slow_server.wait_for_log("[walk-away-1] POST /v1/images/edits status=499")
    assert edit(slow_server.url).status_code == 200
    text = httpx.get(f"{slow_server.url}/metrics").text
    assert metric(text, "imgedit_cancellations_total", '{reason="disconnect"}') >= 1


def test_a_stream_that_is_closed_stops_its_run(slow_server):
    client = openai.OpenAI(api_key="x", base_url=f"{slow_server.url}/v1", max_retries=0)
    stream = client.images.edit(
        image=gradient_png(),
        prompt="stream then leave",
        stream=True,
        partial_images=3,
        extra_body={"num_inference_steps": 200},
        extra_headers={"x-request-id": "stream-leaver"},
    )
    first = next(iter(stream))
    assert first.type == "image_edit.partial_image"
    stream.close()
    assert slow_server.wait_for_log("[stream-leaver] client disconnected from the stream; stopping its edit")
    stopped = re.search(
        r"\[stream-leaver\] stopped mid-run \(disconnect\) after step (\d+)/200",
        _wait_text(slow_server, "stream-leaver] stopped"),
    )
    assert stopped and int(stopped.group(1)) < 200
    assert slow_server.wait_for_log("[stream-leaver] POST /v1/images/edits status=200")
    assert "stream=disconnected" in slow_server.log()


def pixels(response: httpx.Response) -> np.ndarray:
    return np.asarray(decode(base64.b64decode(response.json()["data"][0]["b64_json"])).convert("RGB"))


def _wait_text(server, text: str) -> str:
    assert server.wait_for_log(text)
    return server.log()


def test_out_of_memory_fails_only_that_request(slow_server):
    failed = edit(slow_server.url, prompt=OOM_PROMPT)
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "out_of_memory"
    assert int(failed.headers["retry-after"]) >= 1
    assert edit(slow_server.url).status_code == 200


def test_out_of_memory_mid_stream_is_an_error_event(slow_server):
    client = openai.OpenAI(api_key="x", base_url=f"{slow_server.url}/v1", max_retries=0)
    stream = client.images.edit(image=gradient_png(), prompt=OOM_PROMPT, stream=True, partial_images=2)
    with pytest.raises(openai.APIError, match="ran out of GPU memory"):
        list(stream)


def test_metrics_after_traffic(slow_server):
    # Its own traffic, so that the counts do not depend on which tests ran before.
    assert [edit(slow_server.url).status_code for _ in range(5)] == [200] * 5
    assert edit(slow_server.url, prompt=OOM_PROMPT).status_code == 503
    text = httpx.get(f"{slow_server.url}/metrics").text
    for name in ("imgedit_queue_depth", "imgedit_runs_in_flight"):
        assert metric(text, name) >= 0
    served = '{model="qwen-image-edit-plus"}'  # runs and images by served model
    assert metric(text, "imgedit_images_total", served) >= 5
    assert metric(text, "imgedit_denoiser_calls_total") >= 5 * 2 * 2  # 2 steps, each guided: 2 calls
    # The same picture and prompts each time: from the second edit on, the prompt, the negative prompt and the
    # picture's VAE encoding are found kept.
    assert metric(text, "imgedit_encoding_cache_hits_total") >= 4 * 3
    assert metric(text, "imgedit_encoding_cache_misses_total") >= 3
    assert metric(text, "imgedit_queue_wait_seconds_bucket", '{le="600.0"}') >= 5
    assert metric(text, "imgedit_run_seconds_bucket", '{le="600.0",model="qwen-image-edit-plus"}') >= 5
    assert metric(text, "imgedit_step_seconds_count") >= 5  # a 2-step edit times its second step only
    assert metric(text, "imgedit_rejections_total", '{reason="out_of_memory"}') >= 1
    info = re.search(r"^imgedit_model_info\{(.*)\} 1\.0$", text, re.M)
    assert (
        info
        and 'family="qwen-image-edit-plus"' in info.group(1)
        and 'served_name="qwen-image-edit-plus"' in info.group(1)
    )


def test_sigterm_lets_the_run_in_flight_finish(tmp_path):
    server = start_server(tmp_path, hooks=True, TEST_STEP_DELAY="0.1", IMGEDIT_PROGRESS_LOG_SECONDS="0.2")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(edit, server.url, 30, "p", **{"x-request-id": "last-one"})
            assert server.wait_for_log("[last-one] step ")
            os.kill(server.process.pid, signal.SIGTERM)
            assert server.wait_for_log("shutting down: admitting no new requests")
            # 503 while draining, until the server stops answering altogether (no answer: None).
            assert ready_status(server.url) in (503, None)
            response = running.result(timeout=60)
        assert response.status_code == 200 and len(response.json()["data"]) == 1
        assert server.process.wait(timeout=60) == 0
        assert "shutting down: admitting no new requests" in server.log()
        with pytest.raises(httpx.ConnectError):
            edit(server.url)
    finally:
        stop(server.process)


def test_queued_requests_are_fused_into_one_batch_with_the_same_pictures(tmp_path):
    gate = tmp_path / "gate"
    server = start_server(
        tmp_path,
        IMGEDIT_MODEL="tiny:instruct-pix2pix",
        IMGEDIT_MAX_BATCH="4",
        hooks=True,
        TEST_STEP_GATE=str(gate),
        TEST_STEP_GATE_AT="0",
    )

    def request(prompt: str, seed: int | None = None) -> httpx.Response:
        seeded = {} if seed is None else {"seed": str(seed)}
        return httpx.post(
            f"{server.url}/v1/images/edits",
            files=[("image", gradient_png(64, 64))],
            data={"prompt": prompt, "num_inference_steps": "3", **seeded},
            timeout=120,
        )

    def while_the_engine_is_held(*prompts: str, seeded: bool) -> list[httpx.Response]:
        """Answers to ``prompts``, all queued while a gated request holds the engine at its first step."""
        gate.unlink(missing_ok=True)
        Path(f"{gate}.reached").unlink(missing_ok=True)
        with ThreadPoolExecutor(max_workers=len(prompts) + 1) as pool:
            holder = pool.submit(request, "gated", 0)
            while not Path(f"{gate}.reached").exists():
                time.sleep(0.02)
            queued = [
                pool.submit(request, prompt, 10 + index if seeded else None) for index, prompt in enumerate(prompts)
            ]
            while metric(httpx.get(f"{server.url}/metrics").text, "imgedit_queue_depth") < len(prompts):
                time.sleep(0.05)
            gate.touch()
            answers = [future.result(timeout=120) for future in queued]
            assert holder.result(timeout=120).status_code == 200
        return answers

    try:
        prompts = [f"edit {index}" for index in range(3)]
        fused = while_the_engine_is_held(*prompts, seeded=False)
        assert server.wait_for_log("running 3 requests as one batch")
        seeds = [int(answer.headers["x-imgedit-seeds"]) for answer in fused]
        alone = [request(prompt, seed) for prompt, seed in zip(prompts, seeds, strict=True)]  # one at a time
        for batched, single in zip(fused, alone, strict=True):
            difference = np.abs(pixels(batched).astype(int) - pixels(single).astype(int)).max()
            assert difference <= 1  # batched arithmetic may round a level differently
        assert server.log().count("as one batch") == 1
        # A request that names its seed never joins a batch: the same seed gives the same bytes.
        seeded = while_the_engine_is_held(*prompts, seeded=True)
        assert server.log().count("as one batch") == 1
        replayed = [request(prompt, 10 + index) for index, prompt in enumerate(prompts)]
        for first, again in zip(seeded, replayed, strict=True):
            assert first.json()["data"][0]["b64_json"] == again.json()["data"][0]["b64_json"]
    finally:
        stop(server.process)
