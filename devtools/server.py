"""Starting and stopping a real ``bentoml serve`` process, for the integration tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
#: On a server's PYTHONPATH, this folder's sitecustomize.py installs the test hooks (devtools/test_hooks.py).
HOOKS = ROOT / "devtools" / "hooks"
BENTOML = Path(sys.executable).with_name("bentoml")
STARTUP_SECONDS = 180
#: Servers started before giving up on finding a port nobody takes first.
PORT_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    log_path: Path
    tmp_dir: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """``bentoml serve`` and every process under it (its workers and their ranks)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        """The live worker processes: those that hold the model and run the edits (not a killed one not yet reaped)."""
        found = []
        for child in self.processes()[1:]:
            try:
                if "worker" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:  # gone, or a zombie not yet reaped
                continue
        return found

    def worker(self) -> psutil.Process:
        """The one worker process of a server with one worker."""
        workers = self.workers()
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker process, found {workers}")
        return workers[0]

    def wait_for_log(self, text: str, seconds: float = 10) -> bool:
        """Whether ``text`` shows up in the log; access lines are written just after the response."""
        deadline = time.monotonic() + seconds
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def server_environment(tmp: Path, hooks: bool = False, **overrides: str) -> dict[str, str]:
    """The environment of a test server: the tiny model, offline, everything under ``tmp``; ``overrides`` win.

    Args:
        hooks: install the test hooks (``devtools/test_hooks.py``), driven by the ``TEST_*`` variables in ``overrides``.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMGEDIT_")}
    tmp_dir = tmp / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    env.update(
        IMGEDIT_MODEL="tiny:qwen-image-edit-plus",
        IMGEDIT_DATA_DIR=str(tmp / "data"),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf"),
        BENTOML_HOME=str(tmp / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        TMPDIR=str(tmp_dir),
        PYTHONUNBUFFERED="1",
    )
    if hooks:
        env["PYTHONPATH"] = hooks_path()
    env.update(overrides)
    return env


def hooks_path() -> str:
    """The ``PYTHONPATH`` that installs the test hooks in a process (and finds ``devtools`` from there)."""
    return os.pathsep.join((str(HOOKS), str(ROOT)))


def serve_command(port: int) -> list[str]:
    return [str(BENTOML), "serve", "service:ImageEdit", "--host", "127.0.0.1", "--port", str(port)]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_server(tmp: Path, poll_seconds: float = 0.3, hooks: bool = False, **overrides: str) -> Server:
    """Start ``bentoml serve`` with the settings in ``overrides`` and wait until ``/readyz`` answers 200.

    ``poll_seconds`` is how often readiness is asked; the start-up benchmark asks often. With
    ``hooks``, the test hooks are installed (see :func:`server_environment`).
    """
    env = server_environment(tmp, hooks, **overrides)
    return serve_on_a_free_port(serve_command, env, tmp / "server.log", poll_seconds=poll_seconds)


def serve_on_a_free_port(
    command: Callable[[int], list[str]],
    env: dict[str, str],
    log_path: Path,
    cwd: Path = ROOT,
    poll_seconds: float = 0.3,
) -> Server:
    """Run ``command(port)`` on a free port, its output in ``log_path``, and wait until it is ready.

    The port is free when chosen, but something may take it before the server binds it (even
    the readiness poll itself: a connection to a port nobody listens on can get that very port
    as its own, and so connect to itself). Then the server is started again on another port.
    """
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command(port), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(f"http://127.0.0.1:{port}", log_path, Path(env["TMPDIR"]), process)
        try:
            wait_until_ready(server, poll_seconds)
        except RuntimeError:
            if "Address already in use" not in server.log() or attempt == PORT_ATTEMPTS - 1:
                raise
            continue
        return server
    raise AssertionError("unreachable")


def wait_until_ready(server: Server, poll_seconds: float = 0.3) -> None:
    """Wait for ``/readyz`` to answer 200; stop the server and fail when it dies or takes too long."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_seconds)
    stop(server.process)
    raise RuntimeError(f"bentoml serve was not ready after {STARTUP_SECONDS} s:\n{server.log()}")
