"""429s behind a load balancer: round robin, two random choices and least connections, over servers with short queues.

Two ``bentoml serve`` processes with the tiny model stand in for two GPU pods:
each runs one edit at a time (one CPU thread each) and, with
``IMGEDIT_MAX_QUEUE=0``, answers 429 to a request that finds it busy (with 1,
one request may wait). HAProxy
(Debian's package) on loopback sits in front with one frontend per policy:

- ``roundrobin``: takes turns, whatever the load (what kube-proxy's random
  spreading amounts to);
- ``random(2)``: the less loaded of two random draws (the two-choice rule of
  Envoy's ``LEAST_REQUEST``, Envoy Gateway's ``LeastRequest``);
- ``leastconn``: the server with the fewest requests in progress;
- ``leastconn`` with ``maxconn 1`` per server: the balancer holds a request
  until a server is free, as BentoCloud's external queue does.

Each round, ``c`` clients send edits back to back (a seeded mix of step counts,
so edits differ in length) until the round's budget of requests is spent; a
429 counts, and that client pauses ``--pause`` seconds before its next edit.
Policies take turns round by round (the order rotates), so machine noise hits
each alike. Nothing is retried.

    python -m bench.routing --clients 2 3 --max-queue 0 1 --requests 100 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import photo_like, png_bytes, report, table
from devtools.balancer import start_balancer, stop_balancer
from devtools.server import start_server, stop

#: Policy name to (HAProxy ``balance`` arguments, options on each ``server`` line).
POLICIES: dict[str, tuple[str, str]] = {
    "roundrobin": ("roundrobin", ""),
    "random(2)": ("random(2)", ""),
    "leastconn": ("leastconn", ""),
    "leastconn, maxconn 1": ("leastconn", "maxconn 1"),
}
SERVER_SETTINGS = {"IMGEDIT_MAX_QUEUE": "0", "IMGEDIT_SHUTDOWN_GRACE": "0", "OMP_NUM_THREADS": "1"}
STEPS = (2, 4, 8, 16)
SIZE = 64


@dataclass
class Tally:
    """What the rounds of one policy and client count saw, added up."""

    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)


async def run_round(url: str, clients: int, requests: int, seed: int, pause: float) -> tuple[float, Counter[int]]:
    """``clients`` clients spend a budget of ``requests`` edits on ``url``; returns the seconds and the statuses."""
    upload = png_bytes(photo_like(SIZE, SIZE))
    remaining = [requests]
    statuses: Counter[int] = Counter()

    async def client(http: httpx.AsyncClient, rng: random.Random) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            fields = {"prompt": "make it blue", "size": f"{SIZE}x{SIZE}", "num_inference_steps": str(rng.choice(STEPS))}
            response = await http.post(
                "/v1/images/edits", data=fields, files={"image": ("in.png", upload, "image/png")}
            )
            statuses[response.status_code] += 1
            if response.status_code == 429:
                await asyncio.sleep(pause)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, random.Random(seed * 1000 + index)) for index in range(clients)))
        return time.perf_counter() - started, statuses


def measure(
    tmp: Path,
    addresses: Mapping[str, str],
    clients: Sequence[int],
    requests: int,
    repeats: int,
    pause: float,
    policies: Mapping[str, tuple[str, str]] = POLICIES,
) -> dict[tuple[str, int], Tally]:
    """Rounds for every policy and client count over the servers at ``addresses`` (name to ``host:port``)."""
    balancer = start_balancer(tmp, addresses, policies)
    tallies = {(policy, count): Tally() for policy in policies for count in clients}
    try:
        order = list(policies)
        for repeat in range(repeats):
            for count in clients:
                for policy in order[repeat % len(order) :] + order[: repeat % len(order)]:
                    seconds, statuses = asyncio.run(
                        run_round(balancer.urls[policy], count, requests, seed=repeat, pause=pause)
                    )
                    tally = tallies[(policy, count)]
                    tally.requests += requests
                    tally.seconds += seconds
                    tally.statuses.update(statuses)
                    print(policy, count, repeat, f"{seconds:.1f} s", dict(statuses), flush=True)
    finally:
        stop_balancer(balancer)
    return tallies


def results_table(tallies: Mapping[int, Mapping[tuple[str, int], Tally]]) -> str:
    """One row per server queue length, client count and policy."""
    rows = []
    for max_queue, by_policy in tallies.items():
        order = sorted(by_policy, key=lambda key: (key[1], list(POLICIES).index(key[0]) if key[0] in POLICIES else 0))
        for policy, clients in order:
            tally = by_policy[(policy, clients)]
            refused = tally.statuses[429]
            others = sum(count for status, count in tally.statuses.items() if status not in (200, 429))
            rows.append(
                (
                    max_queue,
                    clients,
                    policy,
                    tally.requests,
                    refused,
                    f"{100 * refused / tally.requests:.1f} %",
                    others,
                    f"{tally.statuses[200] / tally.seconds:.2f}",
                )
            )
    header = (
        "`IMGEDIT_MAX_QUEUE`",
        "clients",
        "HAProxy policy",
        "requests",
        "429s",
        "refused",
        "other errors",
        "edits/s",
    )
    return table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:qwen-image-edit-plus")
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--max-queue", type=int, nargs="+", default=[0, 1], help="IMGEDIT_MAX_QUEUE values to try")
    parser.add_argument("--requests", type=int, default=100, help="edits per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per policy and client count")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds a client waits after a 429")
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    tallies = {}
    for max_queue in arguments.max_queue:
        settings = {**SERVER_SETTINGS, "IMGEDIT_MODEL": arguments.model, "IMGEDIT_MAX_QUEUE": str(max_queue)}
        with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
            root = Path(tmp)
            for name in "ab":
                (root / name).mkdir()
            with ThreadPoolExecutor(2) as pool:
                servers = list(pool.map(lambda name: start_server(root / name, **settings), "ab"))  # noqa: B023
            try:
                addresses = {
                    name: server.url.removeprefix("http://") for name, server in zip("ab", servers, strict=True)
                }
                print(f"IMGEDIT_MAX_QUEUE={max_queue}", flush=True)
                tallies[max_queue] = measure(
                    root, addresses, arguments.clients, arguments.requests, arguments.repeats, arguments.pause
                )
            finally:
                for server in servers:
                    stop(server.process)

    body = (
        f"Two servers (`{arguments.model}`, one CPU thread each) behind HAProxy on loopback. {SIZE}x{SIZE} edits "
        f"with {', '.join(map(str, STEPS))} steps drawn at random; each client sends its next edit when answered, "
        f"and pauses {arguments.pause:g} s after a 429 (nothing is retried). {arguments.repeats} rounds of "
        f"{arguments.requests} edits per row, policies taking turns.\n\n"
        + results_table(tallies)
        + "\n\nHow to read it. With as many clients as servers, least connections never sends a request to a busy "
        "server while another is free, so it refuses none even with a queue of 0: a server marks itself idle "
        "before its answer goes out, and a request that waited gives up its place as it starts, so the client's "
        "next edit is admitted. Round robin and random choice, blind to load, still send edits to a busy server "
        "while the other is free; a queue of 1 absorbs that. With more clients than servers, every policy without "
        "a balancer queue refuses whoever finds both servers full; `maxconn 1` makes HAProxy hold them until a "
        "server is free. A refused edit is not done, so edits/s compares rows with different refusal rates only "
        "loosely."
    )
    report("routing", "Routing in front of several servers", body, arguments.write)


if __name__ == "__main__":
    main()
