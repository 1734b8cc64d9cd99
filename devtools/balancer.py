"""HAProxy on loopback in front of imgedit servers: one frontend port per balancing policy, for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devtools.server import free_port

#: The response header that names the server HAProxy picked.
SERVED_BY = "x-served-by"


@dataclass
class Balancer:
    process: subprocess.Popen
    urls: dict[str, str]  # policy name to the URL of its frontend
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def haproxy() -> str:
    """The ``haproxy`` command (Debian's package, which ``make system-deps`` installs).

    Raises:
        FileNotFoundError: it is not installed.
    """
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    if found is None:
        raise FileNotFoundError("haproxy is not installed (Debian's `haproxy` package: `make system-deps`)")
    return found


def configuration(servers: Mapping[str, str], policies: Mapping[str, tuple[str, str]], ports: Mapping[str, int]) -> str:
    """An HAProxy configuration with one frontend and backend per policy, each over all ``servers``.

    Args:
        servers: server name to ``host:port``.
        policies: policy name to (``balance`` arguments, options for each ``server`` line, e.g. ``maxconn 1``).
        ports: policy name to the loopback port of its frontend.
    """
    lines = [
        "global",
        "    maxconn 512",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 900s",
        "    timeout server 900s",
        # Requests HAProxy holds while every server is at its maxconn (the balancer's own queue).
        "    timeout queue 900s",
    ]
    for index, (name, (balance, server_options)) in enumerate(policies.items()):
        section = f"policy{index}"  # policy names are free text; HAProxy's section names are not
        lines += [
            f"# {name}",
            f"frontend {section}",
            f"    bind 127.0.0.1:{ports[name]}",
            f"    default_backend {section}",
            f"backend {section}",
            f"    balance {balance}",
            f"    http-response set-header {SERVED_BY} %[srv_name]",
        ]
        lines += [f"    server {server} {address} {server_options}".rstrip() for server, address in servers.items()]
    return "\n".join(lines) + "\n"


def start_balancer(tmp: Path, servers: Mapping[str, str], policies: Mapping[str, tuple[str, str]]) -> Balancer:
    """Run HAProxy in the foreground with :func:`configuration`; return once every frontend accepts connections."""
    ports = {name: free_port() for name in policies}
    config = tmp / "haproxy.cfg"
    config.write_text(configuration(servers, policies, ports))
    checked = subprocess.run([haproxy(), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log_path = tmp / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([haproxy(), "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    for port in ports.values():
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"haproxy did not listen on {port}:\n{log_path.read_text()}") from None
                time.sleep(0.05)
    return Balancer(process, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}, log_path)


def stop_balancer(balancer: Balancer) -> None:
    if balancer.process.poll() is None:
        balancer.process.terminate()
        try:
            balancer.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            balancer.process.kill()
            balancer.process.wait()
