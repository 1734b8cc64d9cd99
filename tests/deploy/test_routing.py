"""Load-aware routing on loopback: two imgedit servers that take one edit each and queue none, behind HAProxy.

One server (X) is kept busy by a long edit; the other (Y) is idle. Then:

- ``balance leastconn`` with ``maxconn 1`` per server (the balancer holds what
  no server can take, as BentoCloud's external queue does) sends every request
  to Y, and Y's first answer is 200;
- ``balance roundrobin`` sends every other request to X whatever its load, and
  X answers 429 with ``Retry-After``.

Only what is certain is asserted: HAProxy's choice, X's 429 while its long edit
verifiably runs, and Y's first edit. Later answers from Y are not: a request
that reaches a server in the instant after it answered the previous one can
still find its engine finishing that run's bookkeeping and get a 429 with
``IMGEDIT_MAX_QUEUE=0``. ``bench/routing.py`` counts the 429s under load.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from devtools.balancer import SERVED_BY, start_balancer, stop_balancer
from devtools.server import start_server, stop
from tests.deploy.support import tool
from tests.helpers import gradient_png

pytestmark = pytest.mark.integration

SERVER_SETTINGS = {
    "IMGEDIT_MAX_QUEUE": "0",
    "IMGEDIT_SHUTDOWN_GRACE": "0",  # stopping the server stops the long edit at once
    "OMP_NUM_THREADS": "1",  # two servers on two cores
}
SHORT = {"prompt": "make it blue", "size": "64x64", "num_inference_steps": "2"}
#: Minutes on the tiny model (about two on the development machine), against seconds for the whole test.
LONG = {"prompt": "make it blue", "size": "512x512", "num_inference_steps": "200"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, balancer_tool):
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda name: start_server(tmp_path_factory.mktemp(name), **SERVER_SETTINGS), "ab"))
    yield dict(zip("ab", started, strict=True))
    for server in started:
        stop(server.process)


@pytest.fixture(scope="module")
def balancer_tool():
    # Fails or skips before two servers are started for nothing.
    return tool("haproxy", "Debian's `haproxy` package: `make system-deps`")


@pytest.fixture(scope="module")
def balancer(servers, tmp_path_factory):
    addresses = {name: server.url.removeprefix("http://") for name, server in servers.items()}
    policies = {"leastconn": ("leastconn", "maxconn 1"), "roundrobin": ("roundrobin", "")}
    started = start_balancer(tmp_path_factory.mktemp("haproxy"), addresses, policies)
    yield started
    stop_balancer(started)


def runs_in_flight(url: str) -> float:
    # As long as the caller's own deadline: once, on a fresh clone, a server starting its first long edit
    # took over 10 s to answer this (not reproduced since), and the answer matters, not its speed.
    text = httpx.get(f"{url}/metrics", timeout=120).text
    return float(re.search(r"^imgedit_runs_in_flight(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE).group(1))


def edit(url: str, fields: dict[str, str]) -> httpx.Response:
    image = gradient_png(64, 64)
    return httpx.post(
        f"{url}/v1/images/edits", data=fields, files={"image": ("in.png", image, "image/png")}, timeout=900
    )


def test_least_connections_spares_the_busy_server_and_round_robin_does_not(servers, balancer):
    assert [runs_in_flight(server.url) for server in servers.values()] == [0, 0]
    long_answer: list[object] = []

    def long_edit() -> None:
        try:
            long_answer.append(edit(balancer.urls["leastconn"], LONG))
        except httpx.HTTPError as error:  # the servers stop under it at the end
            long_answer.append(error)

    thread = threading.Thread(target=long_edit, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while (busy := [name for name, server in servers.items() if runs_in_flight(server.url) == 1]) == []:
        assert time.monotonic() < deadline, "the long edit never started"
        time.sleep(0.1)
    (x,) = busy
    (y,) = set(servers) - {x}

    # Least connections: X has one, Y none, so Y; and with maxconn 1 the balancer queues rather than use X.
    first = edit(balancer.urls["leastconn"], SHORT)
    assert (first.headers[SERVED_BY], first.status_code) == (y, 200)
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: edit(balancer.urls["leastconn"], SHORT), range(2)))
    assert [answer.headers[SERVED_BY] for answer in both] == [y, y]

    # Round robin takes turns whatever the load: one of two goes to X, which has no room.
    answers = [edit(balancer.urls["roundrobin"], SHORT) for _ in range(2)]
    assert sorted(answer.headers[SERVED_BY] for answer in answers) == sorted([x, y])
    (to_x,) = [answer for answer in answers if answer.headers[SERVED_BY] == x]
    assert to_x.status_code == 429 and int(to_x.headers["retry-after"]) >= 1
    assert to_x.json()["error"]["code"] == "rate_limit_exceeded"

    # All of that happened while X's long edit ran.
    assert runs_in_flight(servers[x].url) == 1 and thread.is_alive() and not long_answer


def test_the_routing_benchmark_counts_every_answer(servers, tmp_path):
    """``bench/routing.py`` at its smallest, over these servers (X may still be busy: any answer counts)."""
    from bench.routing import POLICIES, measure, results_table

    addresses = {name: server.url.removeprefix("http://") for name, server in servers.items()}
    tallies = measure(tmp_path, addresses, clients=[2], requests=4, repeats=1, pause=0.0)
    assert set(tallies) == {(policy, 2) for policy in POLICIES}
    assert all(sum(tally.statuses.values()) == tally.requests == 4 for tally in tallies.values())
    assert "| `IMGEDIT_MAX_QUEUE` | clients | HAProxy policy | requests | 429s |" in results_table({0: tallies})
