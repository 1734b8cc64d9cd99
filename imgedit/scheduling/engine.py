"""Decides what runs when: one pipeline run at a time per worker, first in first out.

A diffusers pipeline is stateful and a GPU runs one large call well, not two,
so every pipeline call goes through the engine's single thread; the event loop
only waits. This is the one guarantee that two runs never overlap, whatever
BentoML's own concurrency limits do after a timeout. Decoding inputs and
encoding outputs happen outside, so they overlap with other requests' runs.

* Admission: at most ``max_queue`` requests wait; past that :meth:`Engine.submit`
  raises :class:`QueueFull` with a retry delay estimated from recent runs.
* A request waits at most until its deadline. A run nobody waits for any more
  (deadline passed, client gone, server shutting down) never starts if it is
  still queued, and stops at its next denoising step if it is running.
* Out of GPU memory fails only that request (:class:`OutOfMemory`), after the
  cache is freed; the next run starts clean.
* With ``max_batch`` above 1, queued single-image requests with identical
  parameters may run as one batched call (:mod:`imgedit.scheduling.fusion`), for
  families whose pipelines take batches (the family says whether they do).
* Streaming requests get previews at evenly spaced steps, decoded by the
  previewer the engine was built with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from PIL import Image

from imgedit import metrics
from imgedit.edit import Loras
from imgedit.logs import get_logger
from imgedit.model.call import PipelineCall, RunCancelled
from imgedit.scheduling.fusion import fuse, fusion_key
from imgedit.scheduling.jobs import (
    DeadlineExceeded,
    Draining,
    InProcess,
    Job,
    ModelTurn,
    PreviewSink,
    QueueFull,
    Runner,
)
from imgedit.scheduling.order import take_fusable, take_next
from imgedit.scheduling.steps import Previewer, run_failure, step_hook

log = get_logger(__name__)
T = TypeVar("T")

#: Run times kept for the queue-wait estimate behind ``Retry-After``.
RECENT_RUNS = 20


class Engine:
    """The single consumer of the pipelines of one model.

    Args:
        max_queue: requests allowed to wait behind the one running (a request
            that finds the engine idle never waits, so 0 means "one at a time").
        max_batch: most requests fused into one batched call (1: never fuse).
        progress_interval: seconds between info-level progress lines of a long run.
        previewer: decodes latents into preview pictures (the family's); None serves no previews.
        fusable: whether the model's calls may be fused into batches (the family's say).
        prepare: called on the engine thread before each run with the LoRAs its requests
            chose (switching them is model work, so it happens here, between runs).
        runner: runs each call (by default here; a worker of several ranks runs it on all of them).
    """

    def __init__(
        self,
        max_queue: int = 8,
        max_batch: int = 1,
        progress_interval: float = 30.0,
        *,
        previewer: Previewer | None = None,
        fusable: bool = False,
        prepare: Callable[[Loras], None] | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.progress_interval = progress_interval
        self.own_turn = ModelTurn(prepare=prepare, previewer=previewer, fusable=fusable)
        self.fuses = fusable and max_batch > 1
        self.runner: Runner = runner or InProcess()
        self._waiting: deque[Job] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._draining = False
        self._recent_runs: deque[float] = deque(maxlen=RECENT_RUNS)
        self._running = 0
        self._busy = False  # a run is taken or going (changes under the lock)
        self._most_at_once = 0
        self._current: list[Job] | None = None
        self._urgent: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._thread = threading.Thread(target=self._work, name="imgedit-engine", daemon=True)
        self._thread.start()

    # -- the event loop's side --------------------------------------------------------------

    def submit(
        self,
        calls: Sequence[PipelineCall],
        *,
        previews: int = 0,
        sink: PreviewSink | None = None,
        may_fuse: bool = True,
        loras: Loras = (),
        turn: ModelTurn | None = None,
    ) -> Job:
        """Admit a request's calls, to run after those already waiting.

        Must be called from the event loop that will await :meth:`result`.

        Args:
            previews: previews per call, each passed to ``sink`` on the event loop
                (needs the engine's previewer).
            may_fuse: whether the request allows its call to join a batch; a
                single call without previews of a fusable model then may (only
                with calls that use the same LoRAs).
            loras: the LoRAs its calls run with, handed to ``prepare``.
            turn: the model it runs on, for an engine of several models: its hooks replace the engine's, and
                a job whose model is on the device may go ahead of others (:mod:`imgedit.scheduling.order`).

        Raises:
            QueueFull: ``max_queue`` requests wait already.
            Draining: the server is shutting down.
        """
        loop = asyncio.get_running_loop()
        fuses = self.fuses and (turn is None or turn.fusable)
        key = fusion_key(calls[0]) if fuses and may_fuse and len(calls) == 1 and not previews else None
        job = Job(
            calls=calls,
            future=loop.create_future(),
            loop=loop,
            context=contextvars.copy_context(),
            admitted=time.monotonic(),
            previews=previews,
            sink=sink,
            fusion_key=None if key is None else (loras, key),
            loras=loras,
            turn=turn,
            on_cancel=self._forget,
        )
        with self._condition:
            if self._draining:
                metrics.rejections.labels("draining").inc()
                raise Draining
            # Between two runs the first waiting request is about to start: it no longer holds a place in
            # the queue (a client answered at once must not be refused for it).
            waiting_behind_a_run = len(self._waiting) - (0 if self._busy else 1)
            if waiting_behind_a_run >= self.max_queue:
                metrics.rejections.labels("queue_full").inc()
                raise QueueFull(self._retry_after_locked())
            self._waiting.append(job)
            metrics.queue_depth.set(len(self._waiting))
            self._condition.notify()
        return job

    async def result(self, job: Job, deadline: float) -> list[Image.Image]:
        """Wait for ``job``'s images.

        Args:
            deadline: ``time.monotonic()`` value after which the result is useless.

        Raises:
            DeadlineExceeded: the deadline passed first; the run is stopped.
            RunCancelled: the run was cancelled (shutdown) before it finished.
            OutOfMemory: the device ran out of memory.
            Exception: whatever else the pipeline raised.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._abandon(job, "deadline")
            metrics.rejections.labels("deadline").inc()
            raise DeadlineExceeded from None
        except asyncio.CancelledError:
            self._abandon(job, "abandoned")
            raise

    @staticmethod
    def _abandon(job: Job, reason: str) -> None:
        job.cancel(reason)
        # Nobody will read the outcome; reading it here keeps asyncio from warning that nobody did.
        job.future.add_done_callback(lambda future: future.cancelled() or future.exception())

    async def run(self, calls: Sequence[PipelineCall], deadline: float) -> list[Image.Image]:
        """:meth:`submit` then :meth:`result`: for callers that need nothing in between."""
        return await self.result(self.submit(calls), deadline)

    def run_now(self, calls: Sequence[PipelineCall]) -> list[Image.Image]:
        """Run ``calls`` ahead of the queue and wait for their images; for start-up, before serving.

        They run on the engine thread like every other call: PyTorch's CPU
        thread pool belongs to the thread that uses it, and a second pool
        competing for the same cores slowed every later run by a quarter on a
        2-core machine (see docs/benchmarks.md).
        """
        return self.between_runs(lambda: [image for call in calls for image in self.runner.invoke(call)]).result()

    def between_runs(self, task: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``task`` on the engine thread before the next run (never during one); its outcome comes in the future.

        For work that changes the model, like loading or unloading a LoRA.

        Raises:
            RuntimeError: the engine is closed.
        """
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._condition:
            if self._closed:  # the engine thread has stopped, and nobody would run it
                raise RuntimeError("the engine is closed")
            self._urgent.append((task, outcome))
            self._condition.notify()
        return outcome

    def drain(self, grace: float) -> None:
        """Admit nothing new; runs still going after ``grace`` seconds are cancelled."""
        with self._condition:
            self._draining = True
        log.info("shutting down: admitting no new requests, %d waiting", self.waiting)
        timer = threading.Timer(grace, self._cancel_everything, args=("shutdown",))
        timer.daemon = True
        timer.start()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Stop the engine's thread once the waiting requests have run, then its runner."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout=5)
        self.runner.close()

    def _forget(self, job: Job) -> None:
        """Drop a cancelled job that is still waiting, so it frees its place in the queue now."""
        with self._condition:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # already taken: the engine thread sees the cancellation at its next step
            metrics.queue_depth.set(len(self._waiting))
        job.context.run(self._dropped, job)

    def _retry_after_locked(self) -> int:
        typical = statistics.median(self._recent_runs) if self._recent_runs else 1.0
        return max(1, math.ceil(typical * (len(self._waiting) + 1)))

    def _cancel_everything(self, reason: str) -> None:
        with self._condition:
            jobs = list(self._waiting) + list(self._current or ())
        for job in jobs:
            job.cancel(reason)

    # -- the engine thread's side -----------------------------------------------------------

    def _work(self) -> None:
        while True:
            urgent = None
            batch: list[Job] = []
            with self._condition:
                while not self._waiting and not self._urgent and not self._closed:
                    self._condition.wait()
                if self._urgent:
                    urgent = self._urgent.popleft()
                elif self._waiting:
                    batch = [take_next(self._waiting)]
                    batch += take_fusable(self._waiting, batch[0], self.max_batch - 1)
                    metrics.queue_depth.set(len(self._waiting))
                else:
                    return
                self._busy = True
            try:
                if urgent is not None:
                    self._run_urgent(*urgent)
                live = [job for job in batch if not (job.cancelled.is_set() and job.context.run(self._dropped, job))]
                if live:
                    self._run(live)
            except BaseException as error:  # never let one request's failure stop the engine
                log.exception("engine failure")
                for job in batch:
                    job.settle(error=error)
            finally:
                with self._condition:
                    self._busy = False

    @staticmethod
    def _run_urgent(task: Callable[[], Any], outcome: concurrent.futures.Future[Any]) -> None:
        try:
            outcome.set_result(task())
        except BaseException as error:
            outcome.set_exception(error)

    def _dropped(self, job: Job) -> bool:
        """Account for a cancelled job that never ran; returns True."""
        metrics.queue_wait.observe(time.monotonic() - job.admitted)
        metrics.cancellations.labels(job.cancel_reason or "unknown").inc()
        log.info("dropped before running (%s)", job.cancel_reason)
        job.settle(error=RunCancelled())
        return True

    def _run(self, batch: list[Job]) -> None:
        started = time.monotonic()
        for job in batch:
            job.started = True
            metrics.queue_wait.observe(started - job.admitted)
        self._current = batch
        self._running += 1
        self._most_at_once = max(self._most_at_once, self._running)
        metrics.runs_in_flight.inc()
        metrics.most_runs_at_once.set(self._most_at_once)
        try:
            if len(batch) == 1:
                outcome: list[Image.Image] | BaseException = batch[0].context.run(self._run_job, batch[0])
                results = [outcome]
            else:
                results = batch[0].context.run(self._run_fused, batch)
        finally:
            self._running -= 1
            metrics.runs_in_flight.dec()
            self._current = None
        elapsed = time.monotonic() - started
        model = self._turn(batch[0]).name
        metrics.run_time.labels(model).observe(elapsed)
        if not any(isinstance(result, BaseException) for result in results):
            self._recent_runs.append(elapsed)  # stopped runs would make the wait look short
        with self._condition:
            # Idle before the answers go out: a client answered at once may send its next edit before
            # this thread gets any further, and with nothing waiting it must be admitted, not refused.
            self._busy = False
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                job.settle(error=result)
            else:
                metrics.images.labels(model).inc(len(result))
                job.settle(images=result)

    def _run_job(self, job: Job) -> list[Image.Image] | BaseException:
        images: list[Image.Image] = []
        try:
            self._prepare(job)
            for call in job.calls:
                if job.cancelled.is_set():  # between the images of one request
                    raise RunCancelled
                images.extend(
                    self.runner.invoke(call, step_hook([job], call, self._previewer(job), self.progress_interval))
                )
                job.calls_done += 1
        except BaseException as error:  # delivered to the waiting request
            return run_failure(error, [job])
        return images

    def _run_fused(self, batch: list[Job]) -> list[list[Image.Image] | BaseException]:
        log.info("running %d requests as one batch", len(batch))
        try:
            self._prepare(batch[0])  # fused jobs chose the same LoRAs and model (their fusion key)
            call = fuse([job.calls[0] for job in batch])
            images = self.runner.invoke(call, step_hook(batch, call, self._previewer(batch[0]), self.progress_interval))
        except BaseException as error:
            failure = run_failure(error, batch)
            return [failure for _ in batch]
        return [[image] for image in images]

    def _turn(self, job: Job) -> ModelTurn:
        return job.turn if job.turn is not None else self.own_turn

    def _prepare(self, job: Job) -> None:
        prepare = self._turn(job).prepare
        if prepare is not None:
            prepare(job.loras)

    def _previewer(self, job: Job) -> Previewer | None:
        return self._turn(job).previewer
