"""Faults and pauses a test can inject into a real server: what the integration tests use to observe the engine.

A test server started with ``hooks=True`` (:func:`devtools.server.start_server`)
has ``devtools/hooks`` on its ``PYTHONPATH``; Python runs the
``sitecustomize.py`` there at start-up in every process of the server (the
worker, and every extra rank), and it calls :func:`install`. Each hook is off
unless its variable is set, and each acts only on the calls it names, so a
test pauses a run at an exact step rather than sleeping. Nothing here ships:
the Bento and the image leave ``devtools/`` out.

:data:`VARIABLES` lists every variable; the development page of the docs shows
the same table (a test keeps them equal).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

#: Every variable that drives a hook, and what it does.
VARIABLES: dict[str, str] = {
    "TEST_WARMUP_GATE": "PATH: the warm-up writes PATH.reached, then waits until PATH exists.",
    "TEST_STEP_DELAY": "SECONDS: every denoising step of a request takes at least that long.",
    "TEST_OOM_PROMPT": "TEXT: a request whose prompt is TEXT runs out of device memory at its first step.",
    "TEST_STEP_GATE": "PATH: a request whose prompt is `gated` writes PATH.reached at step TEST_STEP_GATE_AT, "
    "then waits until PATH exists.",
    "TEST_STEP_GATE_AT": "K: the step (from 0) at which TEST_STEP_GATE waits (default 0).",
    "TEST_CONCURRENCY_FILE": "PATH: the most pipeline calls ever running at once is kept in PATH.",
    "TEST_RANK_OOM_PROMPT": "TEXT: in the extra ranks, a call with this prompt runs out of memory after a step.",
    "TEST_RANK_EARLY_OOM_PROMPT": "TEXT: in the extra ranks, such a call runs out of memory before its first step.",
    "TEST_RANK_PASS_OOM_PROMPT": "TEXT: in the extra ranks, such a call runs out of memory as its second denoiser "
    "pass starts (after the checkpoint before it).",
    "TEST_RANK_HANG_PROMPT": "TEXT: in the extra ranks, such a call stops answering at its first step.",
    "TEST_RANK_START_FAILURE": "MESSAGE: in the extra ranks, loading the model fails with RuntimeError(MESSAGE).",
    "TEST_JOB_LEASE_SECONDS": "SECONDS: a worker's claim on a background job lasts that long unless renewed.",
    "TEST_WEBHOOK_DELAYS": "SECONDS,...: the waits between webhook attempts.",
}


def install() -> None:
    """Turn on the hooks whose variables are set (nothing is imported when none is)."""
    if not any(os.environ.get(name) for name in VARIABLES):
        return
    _job_hooks()
    _engine_hooks()
    if int(os.environ.get("_IMGEDIT_RANK", "0")):  # an extra rank of a worker (see imgedit.ranks.group)
        _rank_hooks()


def _job_hooks() -> None:
    from imgedit.durable import jobs

    if lease := os.environ.get("TEST_JOB_LEASE_SECONDS"):
        jobs.LEASE_SECONDS = float(lease)
    if delays := os.environ.get("TEST_WEBHOOK_DELAYS"):
        jobs.WEBHOOK_DELAYS = tuple(float(delay) for delay in delays.split(","))


def _wait_for(path: str) -> None:
    open(path + ".reached", "w").close()
    while not os.path.exists(path):
        time.sleep(0.02)


def _engine_hooks() -> None:
    import torch

    from imgedit.model.call import PipelineCall
    from imgedit.scheduling.engine import Engine

    gate = os.environ.get("TEST_WARMUP_GATE")
    delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
    oom_prompt = os.environ.get("TEST_OOM_PROMPT")
    step_gate = os.environ.get("TEST_STEP_GATE")
    step_gate_at = int(os.environ.get("TEST_STEP_GATE_AT", "0"))
    concurrency_file = os.environ.get("TEST_CONCURRENCY_FILE")

    if gate:
        run_now = Engine.run_now

        def gated_run_now(self: Engine, calls: Any) -> Any:
            _wait_for(gate)
            return run_now(self, calls)

        Engine.run_now = gated_run_now

    invoke = PipelineCall.invoke
    lock = threading.Lock()
    running = [0, 0]  # now, most ever

    def observed_invoke(self: PipelineCall, on_step: Callable[..., None] | None = None) -> Any:
        with lock:
            running[0] += 1
            running[1] = max(running)
            if concurrency_file:
                with open(concurrency_file, "w") as record:
                    record.write(str(running[1]))
        try:
            if on_step is None:  # the warm-up: not slowed down
                return invoke(self, on_step)
            prompt = self.kwargs.get("prompt")
            failing = oom_prompt is not None and prompt == oom_prompt

            def step(index: int, total: int, latents: Any) -> None:
                if failing:
                    raise torch.OutOfMemoryError("test: injected out of memory")
                time.sleep(delay)
                if step_gate and prompt == "gated" and index == step_gate_at:
                    _wait_for(step_gate)
                on_step(index, total, latents)

            return invoke(self, step)
        finally:
            with lock:
                running[0] -= 1

    PipelineCall.invoke = observed_invoke


def _rank_hooks() -> None:
    import torch

    import imgedit.weights.loader
    from imgedit.model.call import PipelineCall
    from imgedit.model.pipeline import denoiser

    oom = os.environ.get("TEST_RANK_OOM_PROMPT")
    early = os.environ.get("TEST_RANK_EARLY_OOM_PROMPT")
    hang = os.environ.get("TEST_RANK_HANG_PROMPT")
    in_pass = os.environ.get("TEST_RANK_PASS_OOM_PROMPT")
    start_failure = os.environ.get("TEST_RANK_START_FAILURE")

    if oom or early or hang or in_pass:
        invoke = PipelineCall.invoke

        def faulty_invoke(self: PipelineCall, on_step: Callable[..., None] | None = None) -> Any:
            prompt = self.kwargs.get("prompt")
            if prompt == early:
                raise torch.OutOfMemoryError("test: out of memory before the first step")

            def step(index: int, total: int, latents: Any) -> None:
                if prompt == oom:
                    raise torch.OutOfMemoryError("test: out of memory after a step")
                if prompt == hang:
                    threading.Event().wait()  # never set: this rank stops answering
                assert on_step is not None
                on_step(index, total, latents)

            if prompt != in_pass:
                return invoke(self, step if on_step is not None else None)
            passes = []

            def second_pass_fails(module: Any, args: Any) -> None:
                passes.append(1)
                if len(passes) == 2:
                    raise torch.OutOfMemoryError("test: out of memory in the second pass")

            hook = denoiser(self.pipeline).register_forward_pre_hook(second_pass_fails)
            try:
                return invoke(self, step if on_step is not None else None)
            finally:
                hook.remove()

        PipelineCall.invoke = faulty_invoke

    if start_failure:

        def failing_load(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(start_failure)

        imgedit.weights.loader.load_model = failing_load
