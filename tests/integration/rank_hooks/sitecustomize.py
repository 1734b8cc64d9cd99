"""Test-only hooks for processes of a worker that runs each edit on several ranks.

The shared hooks of ``../test_hooks/sitecustomize.py`` apply too (in every
rank, rank 0 included). These act only in the extra ranks (``_IMGEDIT_RANK``
set and not 0), on the calls whose prompt is the given TEXT:

* ``TEST_RANK_OOM_PROMPT=TEXT``: the call runs out of device memory after its first denoising step.
* ``TEST_RANK_EARLY_OOM_PROMPT=TEXT``: the call runs out of device memory before the pipeline starts,
  so before its first forward pass (rank 0 meanwhile encodes the prompt and reaches one).
* ``TEST_RANK_HANG_PROMPT=TEXT``: the call stops answering at its first step, until the rank is killed.
* ``TEST_RANK_START_FAILURE=MESSAGE``: loading the model fails with ``RuntimeError(MESSAGE)``.
"""

import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_hooks", "sitecustomize.py"))

_rank = int(os.environ.get("_IMGEDIT_RANK", "0"))
_oom = os.environ.get("TEST_RANK_OOM_PROMPT")
_early = os.environ.get("TEST_RANK_EARLY_OOM_PROMPT")
_hang = os.environ.get("TEST_RANK_HANG_PROMPT")
_start_failure = os.environ.get("TEST_RANK_START_FAILURE")

if _rank and (_oom or _early or _hang):
    import threading

    import torch

    from imgedit.model.call import PipelineCall

    _invoke = PipelineCall.invoke

    def _faulty_invoke(self, on_step=None):
        prompt = self.kwargs.get("prompt")
        if prompt == _early:
            raise torch.OutOfMemoryError("test: out of memory before the first step")

        def step(index, total, latents):
            if prompt == _oom:
                raise torch.OutOfMemoryError("test: out of memory after a step")
            if prompt == _hang:
                threading.Event().wait()  # never set: this rank stops answering
            on_step(index, total, latents)

        return _invoke(self, step if on_step is not None else None)

    PipelineCall.invoke = _faulty_invoke

if _rank and _start_failure:
    import imgedit.weights.loader

    def _failing_load(*args, **kwargs):
        raise RuntimeError(_start_failure)

    imgedit.weights.loader.load_model = _failing_load
