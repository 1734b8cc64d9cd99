"""The engine under a real server: backpressure, one run at a time, cancellation, faults, shutdown, metrics.

The server runs the tiny model with a test-only delay per denoising step (see
``test_hooks/sitecustomize.py``), so runs last long enough to be observed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.helpers import gradient_png, multipart_body
from tests.integration.conftest import start_server, stop

pytestmark = pytest.mark.integration

HOOKS = str(Path(__file__).parent / "test_hooks")
STEP_DELAY = 0.05
OOM_PROMPT = "raise-oom"


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("slow"),
        PYTHONPATH=HOOKS,
        TEST_STEP_DELAY=str(STEP_DELAY),
        TEST_OOM_PROMPT=OOM_PROMPT,
        IMGEDIT_MAX_QUEUE="4",
        IMGEDIT_PROGRESS_LOG_SECONDS="0.2",
    )
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
    assert metric(final, "imgedit_rejections_total", '{reason="queue_full"}') == statuses.count(429)


def test_a_client_that_disconnects_stops_its_run(slow_server):
    address = urlsplit(slow_server.url)
    body, content_type = multipart_body(
        [("image", gradient_png(64, 64), "a.png"), ("prompt", b"long", None), ("num_inference_steps", b"200", None)]
    )
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nx-request-id: walk-away-1\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(head + body)
        assert slow_server.wait_for_log("[walk-away-1] step ")  # the run has started
    assert slow_server.wait_for_log("[walk-away-1] stopped mid-run (disconnect) after step ")
    stopped = re.search(r"\[walk-away-1\] stopped mid-run \(disconnect\) after step (\d+)/200", slow_server.log())
    assert stopped and int(stopped.group(1)) < 200
    assert edit(slow_server.url).status_code == 200
    text = httpx.get(f"{slow_server.url}/metrics").text
    assert metric(text, "imgedit_cancellations_total", '{reason="disconnect"}') >= 1


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
    text = httpx.get(f"{slow_server.url}/metrics").text
    for name in ("imgedit_queue_depth", "imgedit_runs_in_flight", "imgedit_images_total"):
        assert metric(text, name) >= 0
    assert metric(text, "imgedit_images_total") >= 5
    assert metric(text, "imgedit_queue_wait_seconds_bucket", '{le="600.0"}') >= 5
    assert metric(text, "imgedit_run_seconds_bucket", '{le="600.0"}') >= 5
    assert metric(text, "imgedit_step_seconds_count") >= 10
    assert metric(text, "imgedit_rejections_total", '{reason="out_of_memory"}') >= 1
    info = re.search(r"^imgedit_model_info\{(.*)\} 1\.0$", text, re.M)
    assert (
        info
        and 'family="qwen-image-edit-plus"' in info.group(1)
        and 'served_name="qwen-image-edit-plus"' in info.group(1)
    )


def test_sigterm_lets_the_run_in_flight_finish(tmp_path):
    server = start_server(tmp_path, PYTHONPATH=HOOKS, TEST_STEP_DELAY="0.1", IMGEDIT_PROGRESS_LOG_SECONDS="0.2")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(edit, server.url, 30, "p", **{"x-request-id": "last-one"})
            assert server.wait_for_log("[last-one] step ")
            os.kill(server.process.pid, signal.SIGTERM)
            assert server.wait_for_log("shutting down: admitting no new requests")
            try:
                ready = httpx.get(f"{server.url}/readyz", timeout=5).status_code
            except httpx.HTTPError:
                ready = None  # the server may already have stopped accepting connections
            assert ready != 200  # 503 while draining (None once connections are refused)
            response = running.result(timeout=60)
        assert response.status_code == 200 and len(response.json()["data"]) == 1
        assert server.process.wait(timeout=60) == 0
        assert "shutting down: admitting no new requests" in server.log()
        with pytest.raises(httpx.ConnectError):
            edit(server.url)
    finally:
        stop(server.process)
