"""Throughput and latency with 1, 4 and 16 clients against the ceiling of serialised pipeline runs.

The server runs one edit at a time per worker, so its best possible
throughput is ``1 / t``, where ``t`` is the time of one pipeline run called
in-process with the same arguments. Each round sends ``--requests`` edits
from ``c`` concurrent clients (each sends its next request when the last one
is answered). A client that gets a 429 waits as long as ``Retry-After`` says
and sends the same request again; latency counts from the first try to the
answer, retries included. The server's queue stays at its default size.

Direct runs are timed before and after the rounds, and their median gives
the ceiling. Peak RSS is the worker's high-water mark during each round.

    python -m bench.concurrency --clients 1 4 16 --requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from bench.common import (
    direct_edit,
    edit_form,
    load_family,
    median,
    peak_rss,
    percentile,
    photo_like,
    png_bytes,
    report,
    reset_peak_rss,
    seconds,
    table,
)
from devtools.server import start_server, stop

MiB = 2**20


@dataclass
class Round:
    """What one round of ``clients`` concurrent clients saw."""

    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    peak_rss: int = 0


async def client(
    http: httpx.AsyncClient, fields: dict[str, str], upload: bytes, remaining: list[int], outcome: Round
) -> None:
    """Send edits one after another until the round's budget of requests is spent."""
    while remaining[0] > 0:
        remaining[0] -= 1
        started = time.perf_counter()
        while True:
            response = await http.post(
                "/v1/images/edits", data=fields, files={"image": ("image.png", upload, "image/png")}
            )
            outcome.statuses[response.status_code] += 1
            if response.status_code != 429:
                break
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code == 200:
            outcome.latencies.append(time.perf_counter() - started)


async def run_round(url: str, clients: int, requests: int, fields: dict[str, str], upload: bytes) -> Round:
    outcome = Round(clients)
    remaining = [requests]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, fields, upload, remaining, outcome) for _ in range(clients)))
        outcome.seconds = time.perf_counter() - started
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:instruct-pix2pix")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--direct-runs", type=int, default=10, help="direct runs before and again after the rounds")
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    upload = png_bytes(photo_like(arguments.size, arguments.size))
    fields = edit_form(arguments.size, 1, "png", arguments.steps)
    direct = direct_edit(load_family(arguments.model, arguments.steps), upload, arguments.size, 1, arguments.steps)
    direct()  # warm-up
    direct_times = [seconds(direct) for _ in range(arguments.direct_runs)]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
        server = start_server(Path(tmp), IMGEDIT_MODEL=arguments.model)
        try:
            worker = server.worker().pid
            asyncio.run(run_round(server.url, 1, 3, fields, upload))  # warm-up
            for clients in arguments.clients:
                reset_peak_rss(worker)
                rounds.append(asyncio.run(run_round(server.url, clients, arguments.requests, fields, upload)))
                rounds[-1].peak_rss = peak_rss(worker)
                print(rounds[-1].clients, rounds[-1].seconds, dict(rounds[-1].statuses), flush=True)
        finally:
            stop(server.process)
    direct_times += [seconds(direct) for _ in range(arguments.direct_runs)]

    ceiling = 1 / median(direct_times)
    rows = []
    for outcome in rounds:
        throughput = len(outcome.latencies) / outcome.seconds
        errors = sum(count for status, count in outcome.statuses.items() if status not in (200, 429))
        rows.append(
            (
                outcome.clients,
                f"{throughput:.2f}",
                f"{throughput / ceiling:.3f}",
                f"{percentile(outcome.latencies, 0.5):.2f}",
                f"{percentile(outcome.latencies, 0.99):.2f}",
                outcome.statuses[429],
                errors,
                f"{outcome.peak_rss / MiB:.0f}",
            )
        )
    body = (
        f"`{arguments.model}`, {arguments.size}x{arguments.size} PNG, n=1, {arguments.steps} steps, "
        f"{arguments.requests} requests per round, default queue (8 waiting). Ceiling = 1 / median direct "
        f"pipeline time = {ceiling:.2f} edits/s (median of {len(direct_times)} direct runs, "
        f"{median(direct_times) * 1000:.0f} ms). Latency includes waits after 429s.\n\n"
        + table(
            ("clients", "edits/s", "of ceiling", "p50 s", "p99 s", "429s", "other errors", "worker peak RSS MiB"),
            rows,
        )
    )
    report("concurrency", "Concurrent clients", body, arguments.write)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
