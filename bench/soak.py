"""A soak: mixed clients against a two-worker server, workers SIGKILLed at intervals, SIGTERM at the end.

Clients, each a thread looping until the end: plain edits (half of them
with the registered LoRA ``ink``), streamed edits with a preview, clients
that hang up mid-edit, a seeded stream of mutated requests
(:mod:`devtools.mutations`), an operator who loads the LoRA ``light``,
edits with it and unloads it again, over and over, and a client of background
jobs that polls each job to its end (sending each under an ``Idempotency-Key``,
and once more under the same key when the first answer was lost to a kill). Every ``--kill-every``
seconds one worker is SIGKILLed (BentoML starts another), none in the last
half interval. At the end the server gets SIGTERM while the clients go on,
and must drain and exit 0.

Every request is accounted for; anything outside these outcomes is *lost*:

* ``ok``: 200 with its images, or a complete stream, or a job completed;
* ``busy``: 429 with ``Retry-After``;
* ``refused``: a 4xx in OpenAI's shape for a mutated request;
* ``draining``: 503 ``server_shutting_down`` after SIGTERM, or, for a request sent after SIGTERM, a
  connection refused or closed unanswered (a request sent before it must be answered);
* ``killed``: the connection dropped while a worker was being killed, or a job ended ``worker_lost``
  after a kill;
* ``hung up``: the client's own hang-up.

    python -m bench.soak --minutes 30 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.common import report, table
from devtools.lora_files import write_lora
from devtools.mutations import RequestMutator, small_png
from devtools.server import Server, start_server, stop
from imgedit.model.tiny import build_tiny

MODEL = "tiny:qwen-image-edit-plus"
ADMIN = "sk-soak-admin"
OUTCOMES = ("ok", "busy", "refused", "draining", "killed", "hung up", "lost")
UNLOAD = {"lora_name": "light"}
#: The longest wait for the server to exit after SIGTERM: its drain grace, and then some.
EXIT_SECONDS = 300
EDIT = {"prompt": "make it night", "size": "64x64", "num_inference_steps": "2"}
#: Seconds a background job may take before it counts as stuck (a dead worker's lease runs out in 15).
JOB_STUCK_SECONDS = 90


@dataclass
class Ledger:
    """What happened to every request, and the worker kills, shared by the client threads."""

    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    lost: list[str] = field(default_factory=list)
    #: When each kill began and when its worker's place was taken again (infinity until then).
    kills: list[list[float]] = field(default_factory=list)
    samples: list[tuple[int, float, int]] = field(default_factory=list)
    sigterm_at: float | None = None
    exit_seconds: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, client: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.outcomes[client, outcome] += 1
            if outcome == "lost":
                when = (
                    "" if self.sigterm_at is None else f" ({time.monotonic() - self.sigterm_at:+.1f} s after SIGTERM)"
                )
                self.lost.append(f"{client}{when}: {detail}"[:300])

    def total(self) -> int:
        with self.lock:
            return sum(self.outcomes.values())

    def killed_during(self, started: float, ended: float) -> bool:
        with self.lock:
            return any(start <= ended and started <= end for start, end in self.kills)


def classify(ledger: Ledger, started: float, response: httpx.Response | None, error: Exception | None) -> str:
    """The outcome of one request that a well-behaved client sent (not a mutated one)."""
    draining = ledger.sigterm_at is not None
    if response is None:
        # Asked after SIGTERM: the server may refuse the connection, or close it unanswered as it exits.
        if ledger.sigterm_at is not None and started >= ledger.sigterm_at:
            return "draining"
        return "killed" if ledger.killed_during(started, time.monotonic() + 1.0) else "lost"
    if response.status_code == 200:
        return "ok"
    if response.status_code == 429 and response.headers.get("retry-after"):
        return "busy"
    if draining and response.status_code == 503 and "server_shutting_down" in response.text:
        return "draining"
    return "lost"


class Soak:
    def __init__(self, server: Server, ledger: Ledger, stop_clients: threading.Event, seed: int) -> None:
        self.server, self.ledger, self.stop_clients, self.seed = server, ledger, stop_clients, seed
        self.image = small_png(seed)

    def edit_client(self, name: str, lora: str | None) -> None:
        with httpx.Client(base_url=self.server.url, timeout=120) as http:
            while self._going(self._one(name, lambda: self._post(http, **({"lora": lora} if lora else {})))):
                pass

    def stream_client(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=120) as http:
            while self._going(self._one("stream", lambda: self._stream(http))):
                pass

    def hang_up_client(self) -> None:
        outcome = ""
        while self._going(outcome):
            # A read timeout shorter than the edit: the client gives up and closes while the server works.
            started = time.monotonic()
            try:
                with httpx.Client(base_url=self.server.url, timeout=httpx.Timeout(120, read=0.3)) as http:
                    response = self._post(http, num_inference_steps="20")
                outcome = classify(self.ledger, started, response, None)
                self.ledger.record("hang-up", outcome, response.text[:160])
            except httpx.ReadTimeout:
                self.ledger.record("hang-up", "hung up")
            except httpx.HTTPError as error:
                outcome = classify(self.ledger, started, None, error)
                self.ledger.record("hang-up", outcome, repr(error))

    def bad_input_client(self) -> None:
        mutator = RequestMutator(self.seed)
        outcome = ""
        with httpx.Client(base_url=self.server.url, timeout=120) as http:
            while self._going(outcome):
                request = mutator.next()
                headers = {"content-type": request.content_type} if request.content_type else {}
                started = time.monotonic()
                try:
                    response = http.post("/v1/images/edits", content=request.body, headers=headers)
                except httpx.HTTPError as error:
                    outcome = classify(self.ledger, started, None, error)
                    self.ledger.record("bad input", outcome, f"{request.mutations} {error!r}")
                    continue
                shaped = response.headers.get("content-type", "").startswith("application/json")
                if 400 <= response.status_code < 500 and shaped and "error" in response.json():
                    outcome = "busy" if response.status_code == 429 else "refused"
                else:
                    outcome = classify(self.ledger, started, response, None)
                self.ledger.record(
                    "bad input", outcome, f"{response.status_code} {request.mutations} {response.text[:120]}"
                )

    def lora_operator(self) -> None:
        """Load ``light``, edit with it twice, unload it; over and over.

        A command cut short by a kill leaves the client not knowing whether it
        took effect (the workers agree, through the command log, but the client
        was not told), so the next step is an unload that may find it loaded
        (200) or not (404), as a careful operator would do.
        """
        headers = {"Authorization": f"Bearer {ADMIN}"}
        load = {"lora_name": "light", "lora_path": str(self.server.tmp_dir.parent / "loras" / "light")}
        with httpx.Client(base_url=self.server.url, timeout=120, headers=headers) as http:
            outcomes = [""]
            while all(self._going(outcome) for outcome in outcomes):
                if outcomes[-1] == "killed":
                    outcomes = [self._one("lora unload", lambda: self._unload(http), also_ok=404)]
                    continue
                outcomes = [self._one("lora load", lambda: http.post("/v1/load_lora_adapter", json=load))]
                if outcomes[0] == "ok":
                    outcomes += [self._one("lora edit", lambda: self._post(http, lora="light")) for _ in range(2)]
                    outcomes.append(self._one("lora unload", lambda: self._unload(http)))

    def _unload(self, http: httpx.Client) -> httpx.Response:
        return http.post("/v1/unload_lora_adapter", json=UNLOAD)

    def job_client(self) -> None:
        """Background jobs, each polled until it ends; a job that never ends is lost."""
        with httpx.Client(base_url=self.server.url, timeout=120) as http:
            while self._going(self._one("job", lambda: self._job(http), also_ok=202)):
                pass

    def _job(self, http: httpx.Client) -> httpx.Response:
        key, started = {"Idempotency-Key": f"soak-{time.monotonic_ns()}"}, time.monotonic()
        files, data = [("image", ("in.png", self.image))], EDIT
        try:
            answer = http.post("/v1/images/edits", files=files, data=data, headers={**key, "Prefer": "respond-async"})
        except httpx.HTTPError:
            if not self.ledger.killed_during(started, time.monotonic() + 1.0):
                raise
            # The answer was lost to a kill: the same key again replays it, or runs the job once.
            answer = http.post("/v1/images/edits", files=files, data=data, headers={**key, "Prefer": "respond-async"})
        if answer.status_code != 202:
            return answer
        job_id = answer.json()["id"]
        while not self.stop_clients.is_set() and self.ledger.sigterm_at is None:
            try:
                job = http.get(f"/v1/images/edits/{job_id}").json()
            except httpx.HTTPError:  # a worker being killed: another answers
                time.sleep(0.2)
                continue
            if job["status"] == "completed" and job["data"]:
                return httpx.Response(200, text=job_id)
            lost_to_a_kill = job["status"] == "failed" and job["error"]["code"] == "worker_lost"
            if lost_to_a_kill and self.ledger.killed_during(started, time.monotonic()):
                return httpx.Response(599, text="worker_lost after a kill")
            if job["status"] in ("failed", "cancelled") or time.monotonic() - started > JOB_STUCK_SECONDS:
                return httpx.Response(598, text=f"job {job_id} ended {job['status']}: {json.dumps(job)[:200]}")
            time.sleep(0.2)
        return httpx.Response(503, text="server_shutting_down: the soak stopped while the job ran")

    def _going(self, outcome: str) -> bool:
        """Whether a client goes on after ``outcome``: until the server drains (or the soak is stopped)."""
        return outcome != "draining" and not self.stop_clients.is_set()

    def _one(self, client: str, send: Callable[[], httpx.Response], also_ok: int | None = None) -> str:
        """Send one request and record its outcome, which it returns; ``also_ok`` is a status as good as 200."""
        started = time.monotonic()
        try:
            response: httpx.Response | None = send()
            error: Exception | None = None
        except httpx.HTTPError as failure:
            response, error = None, failure
        outcome = classify(self.ledger, started, response, error)
        if response is not None and response.text == "worker_lost after a kill":
            outcome = "killed"
        if response is not None and response.status_code == also_ok:
            outcome = "ok"
        if outcome == "lost" and response is not None and self._lora_command_met_a_kill(response, started):
            outcome = "killed"
        detail = f"{response.status_code} {response.text[:160]}" if response is not None else repr(error)
        self.ledger.record(client, outcome, detail)
        return outcome

    def _lora_command_met_a_kill(self, response: httpx.Response, started: float) -> bool:
        # A load or unload waits for every worker to apply it; one killed meanwhile cannot, and the answer
        # says so (500 or 504 lora_partly_applied). Its replacement replays the command when it starts.
        return "lora_partly_applied" in response.text and self.ledger.killed_during(started, time.monotonic() + 1.0)

    def _post(self, http: httpx.Client, **fields: str) -> httpx.Response:
        answer = http.post("/v1/images/edits", files=[("image", ("in.png", self.image))], data={**EDIT, **fields})
        if answer.status_code == 200 and not answer.json().get("data"):
            return httpx.Response(599, text=f"a 200 without images: {answer.text[:200]}")
        return answer

    def _stream(self, http: httpx.Client) -> httpx.Response:
        fields = {**EDIT, "stream": "true", "partial_images": "1"}
        with http.stream("POST", "/v1/images/edits", files=[("image", ("in.png", self.image))], data=fields) as answer:
            text = answer.read().decode()
        if answer.status_code == 200 and "image_edit.completed" not in text:
            return httpx.Response(599, text=f"a stream without its completed event: {text[-200:]}")
        return answer


def killer(server: Server, ledger: Ledger, every: float, last_before: float, stop_killing: threading.Event) -> None:
    """SIGKILL one worker every ``every`` seconds, once two run, until ``time.monotonic()`` reaches ``last_before``.

    A kill lasts until its worker's place is taken.
    """
    while not stop_killing.wait(every) and time.monotonic() < last_before:
        alive = server.workers()
        if len(alive) < 2:
            continue
        victim = min(alive, key=lambda process: process.create_time())
        kill = [time.monotonic(), math.inf]
        with ledger.lock:  # marked before the signal, so that no request it drops is judged before it is
            ledger.kills.append(kill)
        victim.send_signal(signal.SIGKILL)
        while len(server.workers()) < 2 or _alive(victim):
            time.sleep(0.2)
        with ledger.lock:
            kill[1] = time.monotonic() + 2.0


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sampler(server: Server, ledger: Ledger, every: int, stop_sampling: threading.Event) -> None:
    """Every ``every`` requests: the server's processes' resident memory (MiB) and open files."""
    next_at = 0
    while not stop_sampling.wait(0.5):
        done = ledger.total()
        if done < next_at:
            continue
        rss, files = 0.0, 0
        for process in server.processes():
            try:
                rss += process.memory_info().rss / 2**20
                files += process.num_fds()
            except psutil.Error:
                continue
        ledger.samples.append((done, rss, files))
        next_at = done + every


def run(minutes: float, kill_every: float, seed: int, sample_every: int) -> tuple[Ledger, int | None]:
    """Soak a fresh server for ``minutes``; returns the ledger and the server's exit status."""
    tmp = Path(tempfile.mkdtemp(prefix="imgedit-soak-"))
    pipeline = build_tiny(MODEL).pipeline
    write_lora(pipeline, tmp / "loras" / "ink", seed=1)
    write_lora(pipeline, tmp / "loras" / "light", seed=2)
    server = start_server(
        tmp,
        IMGEDIT_MODEL=MODEL,
        IMGEDIT_WORKERS="2",
        IMGEDIT_LORA_DIR=str(tmp / "loras"),
        IMGEDIT_LORA_ADAPTERS=f"ink={tmp / 'loras' / 'ink'}",
        IMGEDIT_ADMIN_KEY=ADMIN,
        IMGEDIT_SHUTDOWN_GRACE="60",
    )
    ledger, stop_clients, stop_helpers = Ledger(), threading.Event(), threading.Event()
    soak = Soak(server, ledger, stop_clients, seed)
    clients = [
        threading.Thread(target=soak.edit_client, args=("sync", None)),
        threading.Thread(target=soak.edit_client, args=("sync + lora", "ink")),
        threading.Thread(target=soak.stream_client),
        threading.Thread(target=soak.hang_up_client),
        threading.Thread(target=soak.bad_input_client),
        threading.Thread(target=soak.lora_operator),
        threading.Thread(target=soak.job_client),
    ]
    helpers = [
        # No kill in the last half interval: the SIGTERM finds both workers serving, whatever the timing.
        threading.Thread(
            target=killer,
            args=(server, ledger, kill_every, time.monotonic() + minutes * 60 - kill_every / 2, stop_helpers),
        ),
        threading.Thread(target=sampler, args=(server, ledger, sample_every, stop_helpers)),
    ]
    try:
        for thread in clients + helpers:
            thread.start()
        time.sleep(minutes * 60)
        stop_helpers.set()
        helpers[0].join()
        ledger.sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)  # to `bentoml serve` alone: it stops its workers itself
        try:
            status: int | None = server.process.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            status = None  # reported as such; `stop` below ends it
        ledger.exit_seconds = time.monotonic() - ledger.sigterm_at
        stop_clients.set()
        for thread in clients + helpers:
            thread.join()
    finally:
        stop_clients.set()
        stop_helpers.set()
        stop(server.process)
    return ledger, status


def results(ledger: Ledger, minutes: float, kill_every: float, status: int | None) -> str:
    clients = sorted({client for client, _ in ledger.outcomes})
    rows = [[client, *(ledger.outcomes[client, outcome] for outcome in OUTCOMES)] for client in clients]
    rows.append(["all", *(sum(ledger.outcomes[client, outcome] for client in clients) for outcome in OUTCOMES)])
    first = ledger.samples[0] if ledger.samples else (0, 0.0, 0)
    samples = [[done, f"{rss:.0f}", f"{rss - first[1]:+.0f}", files] for done, rss, files in ledger.samples]
    lost = "\n".join(f"- {line}" for line in ledger.lost[:20]) or "none"
    ending = (
        f"the server exited with status {status} {ledger.exit_seconds:.0f} s after it"
        if status is not None
        else f"the server had not exited {EXIT_SECONDS} s after it"
    )
    return (
        f"{minutes:g} minutes, two workers, a worker SIGKILLed every {kill_every:g} s "
        f"({len(ledger.kills)} kills), SIGTERM at the end: {ending}.\n\n"
        + table(["client", *OUTCOMES], rows)
        + "\n\nThe server's processes (``bentoml serve`` and its workers) as the requests went by:\n\n"
        + table(["requests", "RSS MiB", "since the first", "open files"], samples)
        + f"\n\nLost requests: {lost}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--kill-every", type=float, default=90, help="seconds between worker kills")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-every", type=int, default=1000, help="requests between memory samples")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    options = parser.parse_args()
    ledger, status = run(options.minutes, options.kill_every, options.seed, options.sample_every)
    report(
        "soak",
        "Soak: nothing lost but a killed worker's requests",
        results(ledger, options.minutes, options.kill_every, status),
        options.write,
    )
    if options.json is not None:
        counts = {f"{client}/{outcome}": count for (client, outcome), count in ledger.outcomes.items()}
        summary = {
            "status": status,
            "exit_seconds": ledger.exit_seconds,
            "kills": len(ledger.kills),
            "lost": ledger.lost,
            "counts": counts,
            "samples": ledger.samples,
        }
        options.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
