"""Servers on one host: each keeps its own metrics, and its processes end with it however it ends.

Two servers started here share what servers of one machine share, BentoML's home and the temporary
directory (the other integration servers each have their own). A server is killed with SIGKILL
alone, not its process group: its workers live in sessions of their own and must notice by
themselves. The bounds below are generous liveness bounds, not timings.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from devtools.server import Server, start_server, stop
from tests.helpers import small_edit

pytestmark = pytest.mark.integration

#: Seconds within which a killed server's processes must be gone and its port free again.
LEFTOVER_SECONDS = 30


@pytest.fixture
def host(tmp_path) -> dict[str, str]:
    """The variables that make servers share a host's BentoML home and temporary directory."""
    (tmp_path / "shared-tmp").mkdir()
    return {"BENTOML_HOME": str(tmp_path / "shared-bentoml"), "TMPDIR": str(tmp_path / "shared-tmp")}


def scrape(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def images_made(text: str) -> float:
    match = re.search(r"^imgedit_images_total\{model=\"[^\"]+\"\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def metrics_folder(server: Server) -> Path:
    """The folder of ``prometheus_client`` files the server's worker writes to."""
    return Path(server.worker().environ()["PROMETHEUS_MULTIPROC_DIR"])


def test_two_servers_on_one_host_keep_their_metrics_apart(tmp_path, host):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = start_server(tmp_path / "first", IMGEDIT_SERVED_MODEL_NAME="first", **host)
    second = None
    try:
        first_folder = metrics_folder(first)
        first_files = {path.name for path in first_folder.iterdir()}
        assert any(name.endswith(".db") for name in first_files)
        second = start_server(tmp_path / "second", IMGEDIT_SERVED_MODEL_NAME="second", **host)
        second_folder = metrics_folder(second)
        assert second_folder != first_folder
        assert first_files <= {path.name for path in first_folder.iterdir()}  # the second start wiped nothing

        first_text, second_text = scrape(first), scrape(second)
        assert 'served_name="first"' in first_text and 'served_name="second"' not in first_text
        assert 'served_name="second"' in second_text and 'served_name="first"' not in second_text

        response = small_edit(first.url)
        assert response.status_code == 200, response.text
        assert images_made(scrape(first)) == images_made(first_text) + 1
        assert images_made(scrape(second)) == images_made(second_text)
    finally:
        if second is not None:
            stop(second.process)
        stop(first.process)
    # Each server removes its folder when it exits.
    assert not first_folder.parent.exists()
    if second is not None:
        assert not second_folder.parent.exists()


def gone(process: psutil.Process) -> bool:
    """Whether ``process`` has ended (a zombie, waiting for whoever adopted it to collect it, has)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_free(url: str) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", urlsplit(url).port or 0))
        except OSError:
            return False
        return True


@pytest.mark.parametrize(
    "settings",
    [{"IMGEDIT_WORKERS": "2"}, {"IMGEDIT_DEVICE": "cpu", "IMGEDIT_ULYSSES_DEGREE": "2"}],
    ids=["two-workers", "two-ranks"],
)
def test_a_killed_server_leaves_no_process_and_frees_its_port(tmp_path, settings):
    server = start_server(tmp_path, **settings)
    processes = psutil.Process(server.process.pid).children(recursive=True)
    try:
        commands = [" ".join(process.cmdline()) for process in processes]
        if "IMGEDIT_WORKERS" in settings:
            assert sum("_bentoml_impl.worker" in command for command in commands) == 2, commands
        else:
            assert any("imgedit.ranks.main" in command for command in commands), commands
        os.kill(server.process.pid, signal.SIGKILL)  # that process alone
        server.process.wait()
        deadline = time.monotonic() + LEFTOVER_SECONDS
        while not (all(gone(process) for process in processes) and port_free(server.url)):
            left = [process.pid for process in processes if not gone(process)]
            assert time.monotonic() < deadline, f"after {LEFTOVER_SECONDS} s, still running: {left}"
            time.sleep(0.2)
    finally:
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.kill()
