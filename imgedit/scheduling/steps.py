"""What happens during a run: after each denoising step (cancel, progress, timing, previews), and if it fails."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from imgedit import metrics
from imgedit.logs import get_logger
from imgedit.model.call import PipelineCall, RunCancelled, StepHook
from imgedit.scheduling.jobs import Job, OutOfMemory

log = get_logger(__name__)

#: Decodes the latents a step hook sees into one picture per image of the call.
Previewer = Callable[[PipelineCall, torch.Tensor], list[Image.Image]]


def step_hook(
    jobs: Sequence[Job], call: PipelineCall, previewer: Previewer | None, progress_interval: float
) -> StepHook:
    """The hook for one run of ``call`` serving ``jobs`` (several when fused).

    It stops the run once every job is cancelled, logs progress every
    ``progress_interval`` seconds (every step at debug level), times every step
    but the first (which also encodes the prompt and images), and sends the
    first job its previews, decoded by ``previewer``, at evenly spaced steps.
    """
    started = last_info = time.monotonic()
    last_step: float | None = None
    preview_steps: set[int] | None = None
    job = jobs[0]

    def on_step(step: int, total: int, latents: torch.Tensor) -> None:
        nonlocal last_step, last_info, preview_steps
        for each in jobs:
            each.progress = (step + 1, total)
        if all(each.cancelled.is_set() for each in jobs):
            raise RunCancelled
        now = time.monotonic()
        if last_step is not None:
            metrics.step_time.observe(now - last_step)
        last_step = now
        log.debug("step %d/%d", step + 1, total)
        if now - last_info >= progress_interval:
            last_info = now
            log.info("step %d/%d after %.0f s", step + 1, total, now - started)
        if job.previews and previewer is not None and job.sink is not None:
            if preview_steps is None:
                preview_steps = evenly_spaced(total, job.previews)
            if step in preview_steps:
                pictures = previewer(call, latents)
                index, job.previews_sent = job.previews_sent, job.previews_sent + 1
                sink = job.sink
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                    job.loop.call_soon_threadsafe(sink, index, pictures)

    return on_step


def evenly_spaced(total: int, count: int) -> set[int]:
    """``count`` step indexes spread evenly over ``total`` steps, the last one excluded (the final image shows it)."""
    if total <= 1 or count <= 0:
        return set()
    return {min(total - 2, max(0, round((index + 1) * total / (count + 1)) - 1)) for index in range(count)}


def run_failure(error: BaseException, jobs: Sequence[Job]) -> BaseException:
    """What the requests of a failed run are told: a stop is logged and counted, and running out of
    device memory frees the cache first and becomes :class:`OutOfMemory`; anything else is passed on."""
    if isinstance(error, RunCancelled):
        for job in jobs:
            metrics.cancellations.labels(job.cancel_reason or "unknown").inc()
        step, total = jobs[0].progress
        log.info("stopped mid-run (%s) after step %d/%d", jobs[0].cancel_reason, step, total)
        return error
    if isinstance(error, torch.OutOfMemoryError):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        metrics.rejections.labels("out_of_memory").inc()
        log.warning("out of device memory; cache freed")
        return OutOfMemory()
    return error
