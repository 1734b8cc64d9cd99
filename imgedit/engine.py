"""Runs pipeline calls one at a time, first in first out, on one dedicated thread.

A diffusers pipeline is stateful and a GPU runs one large call well, not two,
so every call goes through a single worker thread; the event loop only waits.
This is the one guarantee that two calls never overlap, whatever BentoML's
own concurrency limits do after a timeout.

A request waits at most until its deadline. A call whose request has given up
(deadline passed, or the awaiting task was cancelled) never starts if it is
still queued, and a running one stops at the next denoising step.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from imgedit.families.base import PipelineCall
from imgedit.logs import get_logger

log = get_logger(__name__)


class RunCancelled(Exception):
    """The call was stopped because nobody waits for its result any more."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its call finished."""


@dataclass(eq=False)
class _Job:
    calls: Sequence[PipelineCall]
    future: asyncio.Future[list[Image.Image]]
    loop: asyncio.AbstractEventLoop
    context: contextvars.Context
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine:
    """The single consumer of the pipelines of one model: only its thread calls them."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="imgedit-engine", daemon=True)
        self._thread.start()

    def run_now(self, calls: Sequence[PipelineCall]) -> list[Image.Image]:
        """Run ``calls`` on the calling thread; only for start-up, before serving."""
        return self._call_pipeline(calls, threading.Event())

    async def run(self, calls: Sequence[PipelineCall], deadline: float) -> list[Image.Image]:
        """Queue ``calls`` (one request's work, run back to back) and wait for all their images.

        Args:
            calls: the pipeline calls.
            deadline: ``time.monotonic()`` value after which the result is useless.

        Raises:
            DeadlineExceeded: the deadline passed first; the call is stopped.
            Exception: whatever the pipeline raised.
        """
        loop = asyncio.get_running_loop()
        job = _Job(calls, loop.create_future(), loop, contextvars.copy_context())
        self._jobs.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            job.cancelled.set()
            raise DeadlineExceeded from None
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

    def close(self) -> None:
        """Stop the worker thread after the queued calls."""
        self._jobs.put(None)
        self._thread.join(timeout=5)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                self._resolve(job, error=RunCancelled())
                continue
            try:
                images = job.context.run(self._call_pipeline, job.calls, job.cancelled)
            except BaseException as exc:  # delivered to the waiting request
                self._resolve(job, error=exc)
            else:
                self._resolve(job, images=images)

    def _call_pipeline(self, calls: Sequence[PipelineCall], cancelled: threading.Event) -> list[Image.Image]:
        def stop_when_cancelled(step: int, latents: torch.Tensor) -> None:
            if cancelled.is_set():
                raise RunCancelled

        images: list[Image.Image] = []
        for call in calls:
            started = time.perf_counter()
            images.extend(call.invoke(stop_when_cancelled))
            log.debug("pipeline call took %.3f s", time.perf_counter() - started)
        return images

    @staticmethod
    def _resolve(job: _Job, images: list[Image.Image] | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():
                return
            if job.cancelled.is_set():  # nobody awaits it; cancelling avoids an unretrieved-exception warning
                job.future.cancel()
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(images or [])

        with contextlib.suppress(RuntimeError):  # a closed loop means nobody is waiting
            job.loop.call_soon_threadsafe(settle)
