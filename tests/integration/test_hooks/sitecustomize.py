"""Test-only hooks into a server started with this folder on PYTHONPATH.

* ``TEST_WARMUP_GATE=PATH``: the warm-up writes ``PATH.reached``, then waits until ``PATH`` exists.
* ``TEST_STEP_DELAY=SECONDS``: every denoising step of a request takes at least that long, so
  runs last long enough to observe (queueing, cancellation, shutdown).
* ``TEST_OOM_PROMPT=TEXT``: a request whose prompt is TEXT runs out of device memory at its first step.
"""

import os
import time

_gate = os.environ.get("TEST_WARMUP_GATE")
_delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
_oom_prompt = os.environ.get("TEST_OOM_PROMPT")

if _gate or _delay or _oom_prompt:
    import torch

    from imgedit.engine import Engine
    from imgedit.families.base import PipelineCall

    if _gate:
        _run_now = Engine.run_now

        def _gated_run_now(self, calls):
            open(_gate + ".reached", "w").close()
            while not os.path.exists(_gate):
                time.sleep(0.05)
            return _run_now(self, calls)

        Engine.run_now = _gated_run_now

    _invoke = PipelineCall.invoke

    def _slow_or_failing_invoke(self, on_step=None):
        if on_step is None:  # the warm-up: leave it alone
            return _invoke(self, on_step)
        failing = _oom_prompt is not None and self.kwargs.get("prompt") == _oom_prompt

        def step(index, total, latents):
            if failing:
                raise torch.OutOfMemoryError("test: injected out of memory")
            time.sleep(_delay)
            on_step(index, total, latents)

        return _invoke(self, step)

    PipelineCall.invoke = _slow_or_failing_invoke
