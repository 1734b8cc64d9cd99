"""A request's work as the engine sees it, and the ways it can end other than with images."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from imgedit.edit import Loras
from imgedit.model.call import PipelineCall, StepHook

#: Runs on the event loop with each preview: its index in the request (from 0) and the pictures.
PreviewSink = Callable[[int, list[Image.Image]], None]


class Runner(Protocol):
    """Runs the engine's calls: here (:class:`InProcess`), or on several ranks (:mod:`imgedit.ranks.group`)."""

    def invoke(self, call: PipelineCall, on_step: StepHook | None = None) -> list[Image.Image]: ...

    def close(self) -> None: ...


class InProcess:
    """The engine's default runner: each call runs on the engine thread, in this process."""

    @staticmethod
    def invoke(call: PipelineCall, on_step: StepHook | None = None) -> list[Image.Image]:
        return call.invoke(on_step)

    @staticmethod
    def close() -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class ModelTurn:
    """What the engine needs of the model a job runs on, when one engine serves several models.

    Attributes:
        name: the model's served name (the ``model`` label of the run metrics).
        prepare: makes the model ready on the engine thread before the run (its LoRAs switched, the model
            on the device), given the job's LoRAs.
        previewer: decodes its latents into previews (the model's family's).
        fusable: whether its calls may be fused into batches.
        ready: whether a run could start without moving the model onto the device first (None: always).
    """

    name: str = ""
    prepare: Callable[[Loras], None] | None = None
    previewer: Callable[[PipelineCall, Any], list[Image.Image]] | None = None
    fusable: bool = False
    ready: Callable[[], bool] | None = None


class DeadlineExceeded(Exception):
    """The request's deadline passed before its run finished."""


class QueueFull(Exception):
    """Too many requests wait already; ``retry_after`` is the estimated wait in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry in {retry_after} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The server is shutting down and admits nothing new."""


class OutOfMemory(Exception):
    """The device ran out of memory during this request's run (the cache has been freed)."""


@dataclass(eq=False, kw_only=True)
class Job:
    """One request's work, from admission to result.

    Attributes:
        calls: pipeline calls run back to back (one per output image, usually).
        future: where the images (or the failure) arrive, on ``loop``.
        loop: the event loop of the request waiting for them.
        context: the request's context variables (its id), for the engine thread's log lines.
        admitted: ``time.monotonic()`` at admission.
        previews: previews to send per call (0 for none), each to ``sink``.
        fusion_key: calls of jobs with the same key may run as one batch (None: never).
        loras: the LoRAs (name, scale) the calls run with; none: the base model.
    """

    calls: Sequence[PipelineCall]
    future: asyncio.Future[list[Image.Image]]
    loop: asyncio.AbstractEventLoop
    context: contextvars.Context
    admitted: float
    previews: int = 0
    sink: PreviewSink | None = None
    fusion_key: Hashable | None = None
    loras: Loras = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    previews_sent: int = 0
    #: The last step finished and the steps of the call running, for logs and job progress.
    progress: tuple[int, int] = (0, 0)
    #: Whether the engine took it from the queue, and how many of its calls have finished.
    started: bool = False
    calls_done: int = 0
    #: Later jobs that went ahead of it (see :mod:`imgedit.scheduling.order`).
    overtaken: int = 0
    #: The model it runs on, for an engine of several models (None: the engine's own hooks).
    turn: ModelTurn | None = None
    #: Set by the engine: takes a cancelled job out of the queue at once.
    on_cancel: Callable[[Job], None] | None = None

    @property
    def percent(self) -> int:
        """How far its run is, 0 to 100, from the steps done of all its calls (100 only once all are done)."""
        step, total = self.progress
        done = (self.calls_done + (step / total if total else 0.0)) / max(1, len(self.calls))
        return min(100, int(done * 100))

    def settle(self, images: list[Image.Image] | None = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the waiting request, on its event loop (from any thread)."""

        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(images or [])

        with contextlib.suppress(RuntimeError):  # a closed loop means nobody is waiting
            self.loop.call_soon_threadsafe(settle)

    def cancel(self, reason: str) -> None:
        """Stop the run (or drop it from the queue) at once; the first reason given wins."""
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel(self)
