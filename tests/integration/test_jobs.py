"""Edits that outlive a connection, on a real server: links, background jobs, webhooks, idempotent retries.

The server is the shared keyed one (API keys, a webhook secret, the test hooks: see conftest.py);
``tests/integration/test_jobs_workers.py`` covers two workers, a killed worker,
a restart and the S3 store.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from devtools.webhooks import webhook_receiver
from tests.helpers import gradient_png
from tests.integration.conftest import API_KEYS, WEBHOOK_SECRET

pytestmark = pytest.mark.integration

KEYS = API_KEYS
SECRET = WEBHOOK_SECRET
ENDED = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def server(keyed_server):
    return keyed_server


def auth(key: str = KEYS[0]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(server, *, prompt: str = "p", key: str = KEYS[0], headers: dict[str, str] | None = None, **fields: str):
    data = {"prompt": prompt, "num_inference_steps": "3", "seed": "7", **fields}
    return httpx.post(
        f"{server.url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data=data,
        headers={**auth(key), **(headers or {})},
        timeout=120,
    )


def job_of(server, job_id: str, key: str = KEYS[0]) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/images/edits/{job_id}", headers=auth(key), timeout=30)


def wait_for_end(server, job_id: str, key: str = KEYS[0]) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = job_of(server, job_id, key).json()
        if job["status"] in ENDED:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {job}")


class Gate:
    """Holds a request whose prompt is ``gated`` at its second step until opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reached = Path(f"{path}.reached")

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self.reached.unlink(missing_ok=True)

    def wait_reached(self) -> None:
        deadline = time.monotonic() + 60
        while not self.reached.exists():
            assert time.monotonic() < deadline, "the gated run never reached its step"
            time.sleep(0.02)

    def open(self) -> None:
        self.path.touch()


def wait_for_cancel_request(server, job_id: str) -> None:
    """Until the server has recorded the cancel (so the run cannot finish before it is stopped)."""
    with sqlite3.connect(server.tmp_dir.parent / "data" / "imgedit.sqlite3") as database:
        deadline = time.monotonic() + 30
        query = "SELECT cancel_requested FROM jobs WHERE id = ?"
        while not database.execute(query, (job_id,)).fetchone()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def images_made(server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("imgedit_images_total"))


# -- links ------------------------------------------------------------------------------------------


def test_the_sdk_gets_links_that_open_without_a_key(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[0])
    linked = client.images.edit(
        image=("a.png", gradient_png(64, 64), "image/png"),
        prompt="p",
        response_format="url",
        extra_body={"seed": 7, "num_inference_steps": 3},
    )
    inline = client.images.edit(
        image=("a.png", gradient_png(64, 64), "image/png"), prompt="p", extra_body={"seed": 7, "num_inference_steps": 3}
    )
    url = linked.data[0].url
    assert url is not None and linked.data[0].b64_json is None
    assert url.startswith(f"{server.url}/v1/images/files/")
    opened = httpx.get(url)  # no API key
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/png"
    assert opened.content == base64.b64decode(inline.data[0].b64_json)
    name = url.split("?")[0].rsplit("/", 1)[1]
    for tampered, status in [
        (url.replace("expires=", "expires=1"), 403),
        (url.split("?")[0], 403),
        (url.replace(name, name[:-5] + "x.png"), 403),
        (f"{server.url}/v1/images/files/..%2F..%2Fimgedit.sqlite3", 404),
        (f"{server.url}/v1/images/files/{'9' * 5000}.png", 404),
    ]:
        refused = httpx.get(tampered)
        assert refused.status_code == status, tampered
        assert refused.json()["error"]["code"] in ("invalid_signature", "not_found")


def test_a_json_body_gets_links_too(server):
    body = {"prompt": "p", "size": "64x64", "response_format": "url", "images": [{"image_url": data_url()}]}
    answer = httpx.post(f"{server.url}/v1/images/edits", json=body, headers=auth(), timeout=120)
    assert answer.status_code == 200 and answer.json()["data"][0]["b64_json"] is None
    assert httpx.get(answer.json()["data"][0]["url"]).status_code == 200


def data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(gradient_png(64, 64)).decode()


def test_links_honour_the_streaming_rule(server):
    refused = post(server, response_format="url", stream="true")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"


# -- background jobs -----------------------------------------------------------------------------


def test_a_job_gives_the_same_bytes_as_a_synchronous_edit(server):
    answered = post(server)
    accepted = post(server, headers={"Prefer": "respond-async"})
    assert accepted.status_code == 202
    job = accepted.json()
    assert job["object"] == "image.edit" and job["status"] in ("queued", "in_progress")
    assert accepted.headers["location"] == f"/v1/images/edits/{job['id']}"
    assert accepted.headers["preference-applied"] == "respond-async"
    done = wait_for_end(server, job["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["data"][0]["b64_json"] == answered.json()["data"][0]["b64_json"]
    for field in ("size", "output_format", "quality", "usage", "background"):
        assert done[field] == answered.json()[field]
    assert done["expires_at"] - done["completed_at"] == 86400


def test_a_url_job_gives_fresh_links_and_delete_removes_them(server):
    job = post(server, response_format="url", headers={"Prefer": "respond-async"}).json()
    done = wait_for_end(server, job["id"])
    link = done["data"][0]["url"]
    assert httpx.get(link).status_code == 200
    deleted = httpx.delete(f"{server.url}/v1/images/edits/{job['id']}", headers=auth())
    assert deleted.json() == {"id": job["id"], "object": "image.edit.deleted", "deleted": True}
    assert job_of(server, job["id"]).status_code == 404
    assert httpx.get(link).status_code == 404


def test_jobs_belong_to_the_key_that_made_them(server):
    job = post(server, headers={"Prefer": "respond-async"}).json()
    wait_for_end(server, job["id"])
    for method, path in [("GET", ""), ("POST", "/cancel"), ("DELETE", "")]:
        url = f"{server.url}/v1/images/edits/{job['id']}{path}"
        other = httpx.request(method, url, headers=auth(KEYS[1]))
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        assert httpx.request(method, url).status_code == 401
    assert job_of(server, job["id"]).json()["status"] == "completed"


def test_a_running_job_reports_progress_and_cancels(server):
    gate = Gate(server.gate)
    gate.close()
    job = post(server, prompt="gated", headers={"Prefer": "respond-async"}).json()
    queued = post(server, headers={"Prefer": "respond-async"}).json()
    gate.wait_reached()
    deadline = time.monotonic() + 30
    while (running := job_of(server, job["id"]).json())["progress"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert running["status"] == "in_progress" and 0 < running["progress"] < 100
    assert job_of(server, queued["id"]).json()["status"] == "queued"
    cancelled = httpx.post(f"{server.url}/v1/images/edits/{queued['id']}/cancel", headers=auth(), timeout=30)
    assert cancelled.json()["status"] == "cancelled"
    with ThreadPoolExecutor(1) as pool:
        cancelling = pool.submit(
            httpx.post, f"{server.url}/v1/images/edits/{job['id']}/cancel", headers=auth(), timeout=30
        )
        wait_for_cancel_request(server, job["id"])
        gate.open()
        assert cancelling.result().json()["status"] == "cancelled"
    again = httpx.post(f"{server.url}/v1/images/edits/{job['id']}/cancel", headers=auth(), timeout=30)
    assert again.json()["status"] == "cancelled"  # cancelling an ended job leaves it as it ended


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/v1/images/edits/edit_00000000000000000000000000000000", "GET", 404),
        ("/v1/images/edits/" + "x" * 4000, "GET", 404),
        ("/v1/images/edits/%00", "DELETE", 404),
        ("/v1/images/edits/edit_1/cancel", "GET", 405),
        ("/v1/images/edits/edit_1", "PUT", 405),
        ("/v1/images/edits/edit_1/cancel", "POST", 404),
    ],
)
def test_bad_job_paths(server, path, method, status):
    answer = httpx.request(method, server.url + path, headers=auth())
    assert answer.status_code == status
    assert set(answer.json()["error"]) >= {"message", "type", "code"}


def test_a_job_that_cannot_stream_or_names_a_forbidden_webhook_is_a_400(server):
    background = {"Prefer": "respond-async"}
    assert post(server, stream="true", headers=background).json()["error"]["param"] == "stream"
    for target in ("http://169.254.169.254/latest/meta-data", "ftp://example.com/x", "not a url"):
        refused = post(server, webhook_url=target, headers=background)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "webhook_url"
    synchronous = post(server, webhook_url="http://127.0.0.1:9/x")
    assert synchronous.status_code == 400 and synchronous.json()["error"]["param"] == "webhook_url"


# -- webhooks ---------------------------------------------------------------------------------------


@pytest.fixture
def receiver():
    """A local endpoint that answers 500 to the first two deliveries, then 200."""
    with webhook_receiver(refusals=2) as running:
        yield running.url, running.received


def test_a_webhook_is_signed_and_retried_until_accepted(server, receiver):
    url, received = receiver
    job = post(server, webhook_url=url, headers={"Prefer": "respond-async"}).json()
    assert wait_for_end(server, job["id"])["status"] == "completed"
    deadline = time.monotonic() + 30
    while len(received) < 3:
        assert time.monotonic() < deadline, f"only {len(received)} attempts"
        time.sleep(0.05)
    time.sleep(1.5)  # no fourth attempt after the accepted one
    assert len(received) == 3
    events = [Verifier(SECRET).verify(body, headers) for headers, body in received]
    assert events[0] == events[1] == events[2]
    assert events[0]["type"] == "image.edit.completed" and events[0]["data"] == {"id": job["id"]}
    assert events[0]["object"] == "event" and isinstance(events[0]["created_at"], int)
    assert len({headers["webhook-id"] for headers, _ in received}) == 1


# -- idempotent retries ----------------------------------------------------------------------------


def test_a_retry_with_the_same_key_replays_without_running_again(server):
    key = {"Idempotency-Key": os.urandom(8).hex()}
    first = post(server, headers=key, seed="")
    made = images_made(server)
    again = post(server, headers=key, seed="")
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content and "idempotent-replayed" not in first.headers
    assert images_made(server) == made
    other_key = post(server, key=KEYS[1], headers=key, seed="")
    assert other_key.status_code == 200 and "idempotent-replayed" not in other_key.headers
    changed = post(server, prompt="another", headers=key, seed="")
    assert changed.status_code == 422 and changed.json()["error"]["code"] == "idempotency_key_reused"


def test_a_key_still_running_is_a_409_and_a_failure_is_not_kept(server):
    gate = Gate(server.gate)
    gate.close()
    key = {"Idempotency-Key": os.urandom(8).hex()}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, server, prompt="gated", headers=key)
        gate.wait_reached()
        busy = post(server, prompt="gated", headers=key)
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_key_in_use"
        gate.open()
        assert first.result().status_code == 200
    bad = {"Idempotency-Key": os.urandom(8).hex()}
    assert post(server, headers=bad, size="1x1").status_code == 400
    assert post(server, headers=bad).status_code == 200  # the 400 was not kept


def test_a_background_retry_replays_the_same_job(server):
    headers = {"Idempotency-Key": os.urandom(8).hex(), "Prefer": "respond-async"}
    first = post(server, headers=headers)
    again = post(server, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert post(server, headers={"Idempotency-Key": headers["Idempotency-Key"]}).status_code == 422


def test_bad_keys_are_400(server):
    refused = post(server, headers={"Idempotency-Key": "k" * 300})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "Idempotency-Key"


def test_the_metrics_count_jobs_webhooks_and_replays(server):
    """Runs after the tests above (pytest keeps the file's order): each of them left its mark."""
    text = httpx.get(f"{server.url}/metrics").text

    def value(name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    assert value('imgedit_jobs_total{status="completed"}') >= 4
    assert value('imgedit_jobs_total{status="cancelled"}') >= 2
    assert value('imgedit_webhook_attempts_total{outcome="failed"}') >= 2
    assert value('imgedit_webhook_attempts_total{outcome="delivered"}') >= 1
    assert value("imgedit_idempotent_replays_total") >= 2
