"""Test-only hooks into a server started with this folder on PYTHONPATH.

* ``TEST_WARMUP_GATE=PATH``: the warm-up writes ``PATH.reached``, then waits until ``PATH`` exists.
* ``TEST_STEP_DELAY=SECONDS``: every denoising step of a request takes at least that long, so
  runs last long enough to observe (queueing, cancellation, shutdown).
* ``TEST_OOM_PROMPT=TEXT``: a request whose prompt is TEXT runs out of device memory at its first step.
* ``TEST_STEP_GATE=PATH`` with ``TEST_STEP_GATE_AT=K``: a request whose prompt is ``gated`` writes
  ``PATH.reached`` at step K (from 0), then waits until ``PATH`` exists.
* ``TEST_CONCURRENCY_FILE=PATH``: the most pipeline calls ever running at once is kept in PATH.
"""

import os
import threading
import time

_gate = os.environ.get("TEST_WARMUP_GATE")
_delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
_oom_prompt = os.environ.get("TEST_OOM_PROMPT")
_step_gate = os.environ.get("TEST_STEP_GATE")
_step_gate_at = int(os.environ.get("TEST_STEP_GATE_AT", "0"))
_concurrency_file = os.environ.get("TEST_CONCURRENCY_FILE")


def _wait_for(path):
    open(path + ".reached", "w").close()
    while not os.path.exists(path):
        time.sleep(0.02)


if _gate or _delay or _oom_prompt or _step_gate or _concurrency_file:
    import torch

    from imgedit.model.call import PipelineCall
    from imgedit.scheduling.engine import Engine

    if _gate:
        _run_now = Engine.run_now

        def _gated_run_now(self, calls):
            _wait_for(_gate)
            return _run_now(self, calls)

        Engine.run_now = _gated_run_now

    _invoke = PipelineCall.invoke
    _lock = threading.Lock()
    _running = [0, 0]  # now, most ever

    def _observed_invoke(self, on_step=None):
        with _lock:
            _running[0] += 1
            _running[1] = max(_running)
            if _concurrency_file:
                with open(_concurrency_file, "w") as record:
                    record.write(str(_running[1]))
        try:
            if on_step is None:  # the warm-up: not slowed down
                return _invoke(self, on_step)
            prompt = self.kwargs.get("prompt")
            failing = _oom_prompt is not None and prompt == _oom_prompt

            def step(index, total, latents):
                if failing:
                    raise torch.OutOfMemoryError("test: injected out of memory")
                time.sleep(_delay)
                if _step_gate and prompt == "gated" and index == _step_gate_at:
                    _wait_for(_step_gate)
                on_step(index, total, latents)

            return _invoke(self, step)
        finally:
            with _lock:
                _running[0] -= 1

    PipelineCall.invoke = _observed_invoke
