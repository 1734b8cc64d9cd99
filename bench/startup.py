"""Start-up: ``bentoml serve`` from process start to ``/readyz`` 200, against a bare Python process doing the same work.

The bare process imports torch and imgedit, builds the same model with the
server's loader and runs the same warm-up calls, then exits; it is timed
from its start to its line saying it is done. The server is timed from its
start to the first 200 from ``/readyz`` (polled every 20 ms). Runs
alternate, and every one starts from a fresh temporary home, as a new
container would.

    python -m bench.startup --runs 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import median, report, table
from devtools.server import ROOT, server_environment, start_server, stop

BARE = """
import sys
import torch
from imgedit.model.families import family_class_for
from imgedit.weights.loader import load_model
from imgedit.weights.options import LoadOptions

torch.set_grad_enabled(False)
loaded = load_model(LoadOptions(model=sys.argv[1]))
family = family_class_for(loaded.pipeline)(loaded.pipeline)
for plan in family.warmup_plans():
    for call in plan.calls:
        call.pipeline(**call.kwargs)
print("warm", flush=True)
"""
POLL_SECONDS = 0.02


def time_server(model: str) -> float:
    """Seconds from starting ``bentoml serve`` to the first 200 from ``/readyz``."""
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
        started = time.perf_counter()
        server = start_server(Path(tmp), poll_seconds=POLL_SECONDS, IMGEDIT_MODEL=model)
        elapsed = time.perf_counter() - started
        stop(server.process)
        return elapsed


def time_bare(model: str) -> float:
    """Seconds from starting a bare Python process to its line saying the model is built and warm."""
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
        env = server_environment(Path(tmp), IMGEDIT_MODEL=model)
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", BARE, model], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        elapsed = time.perf_counter() - started
        process.wait()
        if line.strip() != b"warm":
            raise RuntimeError(f"the bare process failed (exit {process.returncode})")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:qwen-image-edit-plus")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    timings: dict[str, list[float]] = {"server": [], "bare": []}
    for index in range(arguments.runs):
        order = ("server", "bare") if index % 2 == 0 else ("bare", "server")
        for name in order:
            timings[name].append(time_server(arguments.model) if name == "server" else time_bare(arguments.model))
        print({name: [round(value, 2) for value in values] for name, values in timings.items()}, flush=True)
    server, bare = median(timings["server"]), median(timings["bare"])
    rows = [
        ("bare Python: import, build, warm up", f"{bare:.2f}", "1.00"),
        ("`bentoml serve` to `/readyz` 200", f"{server:.2f}", f"{server / bare:.2f}"),
    ]
    body = f"`{arguments.model}` on CPU, median of {arguments.runs} alternating runs each.\n\n" + table(
        ("what", "seconds", "ratio"), rows
    )
    report("startup", "Start-up", body, arguments.write)


if __name__ == "__main__":
    main()
