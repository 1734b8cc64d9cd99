"""Loading and unloading LoRAs on every worker, before an answer says they are.

Workers are separate processes behind one listening socket, so the worker that
receives a load or an unload cannot call the others. Every such command goes
instead into a log file in a directory that ``bentoml serve`` makes before it
starts the workers (:func:`prepare_directory`). Each worker follows the log in a
thread of its own and applies every command in order; each application is
acknowledged in a file of its own. The receiving worker answers once every
worker has acknowledged the command, or says which have not within the time
allowed. A worker that starts (again) replays the whole log first, so all
workers hold the same LoRAs.

Without a directory (one process, as in the in-process tests) commands are
applied at once, in the caller's thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from imgedit.errors import one_line
from imgedit.logs import get_logger
from imgedit.lora.sources import LoraError

log = get_logger(__name__)

#: Set by :func:`prepare_directory` for the workers: the shared directory, and how many workers serve.
#: (Not ``IMGEDIT_``-prefixed: they are no settings. A worker cannot count the workers itself: it may
#: see only its own GPUs.)
DIRECTORY_VARIABLE = "_IMGEDIT_LORA_SYNC_DIR"
WORKERS_VARIABLE = "_IMGEDIT_LORA_SYNC_WORKERS"
LOG = "commands.jsonl"
#: Seconds between two looks at the log (the only delay a command sees, besides loading itself).
POLL_SECONDS = 0.1
OK = "ok"


class ShuttingDown(Exception):
    """This worker drains for shutdown: it takes no new command and stops waiting for the others.

    The other workers stop too, and a stopped worker acknowledges nothing, so
    waiting on could hold the shutdown for the whole ``timeout``.
    """


@dataclass(frozen=True)
class Command:
    """One load or unload, as the log keeps it: a load reads ``path`` under ``IMGEDIT_LORA_DIR``."""

    op: Literal["load", "unload"]
    name: str
    path: str = ""
    scale: float = 1.0


#: Applies a command to this worker's model; raises :class:`LoraError` when it cannot.
Apply = Callable[[Command], None]


def prepare_directory(workers: int) -> None:
    """In the ``bentoml serve`` process: make the directory the ``workers`` share, and tell them where it is."""
    if DIRECTORY_VARIABLE not in os.environ:
        os.environ[DIRECTORY_VARIABLE] = tempfile.mkdtemp(prefix="imgedit-lora-")
    os.environ[WORKERS_VARIABLE] = str(workers)


class LoraSync:
    """This worker's side of the shared command log.

    Args:
        apply: applies one command to this worker's model (blocking).
        worker: this worker's index, from 0.
        workers: how many workers serve (each must acknowledge every command).
        directory: the shared directory; None applies commands at once.
        timeout: seconds to wait for every worker's acknowledgement.
    """

    def __init__(
        self, apply: Apply, worker: int = 0, workers: int = 1, directory: Path | None = None, timeout: float = 300
    ) -> None:
        self.apply = apply
        self.worker = worker
        self.workers = workers
        self.directory = directory
        self.timeout = timeout
        self._stop = threading.Event()
        self._shutting_down = threading.Event()
        self._thread: threading.Thread | None = None
        #: How far into the log this worker has applied, in bytes.
        self._applied = 0

    @classmethod
    def from_environment(cls, apply: Apply, worker: int) -> LoraSync:
        """This worker's side, as :func:`prepare_directory` arranged it (none outside ``bentoml serve``)."""
        directory = os.environ.get(DIRECTORY_VARIABLE)
        workers = int(os.environ.get(WORKERS_VARIABLE, "1"))
        return cls(apply, worker, workers, Path(directory) if directory else None)

    def start(self) -> None:
        """Replay the log (this worker may be new), then follow it in a thread."""
        if self.directory is None:
            return
        (self.directory / "acks").mkdir(parents=True, exist_ok=True)
        (self.directory / LOG).touch()
        offset = self._applied = self._catch_up(0)
        self._thread = threading.Thread(target=self._follow, args=(offset,), name="imgedit-lora-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def stop_waiting(self) -> None:
        """From now on, :meth:`submit` and :meth:`caught_up` raise :class:`ShuttingDown`, and those waiting stop.

        Safe to call from a signal handler. This worker goes on applying what the log holds.
        """
        self._shutting_down.set()

    async def caught_up(self) -> None:
        """Return once this worker has applied every command the log holds now.

        A worker applies commands between two runs, so it may lag the log; what
        it says of its LoRAs (loaded or not) holds for the log only once it has
        caught up. A command cut short by a killed worker, say, can be in the
        log and not yet applied here.

        Raises:
            ShuttingDown: this worker drains for shutdown.
        """
        self._refuse_when_shutting_down()
        if self.directory is None or self._thread is None:
            return
        written = (self.directory / LOG).stat().st_size
        deadline = time.monotonic() + self.timeout
        while self._applied < written and time.monotonic() < deadline:
            await anyio.sleep(POLL_SECONDS)
            self._refuse_when_shutting_down()

    async def submit(self, command: Command) -> dict[int, str]:
        """Have every worker apply ``command``; return each worker's outcome (``"ok"`` or why not).

        Workers that did not answer within ``timeout`` are missing from the result.

        Raises:
            ShuttingDown: this worker drains for shutdown, before the command went into the log or while it
                waited for the workers (which may or may not have applied it).
        """
        self._refuse_when_shutting_down()
        if self.directory is None:
            return {self.worker: await anyio.to_thread.run_sync(self._outcome, command)}
        sequence = await anyio.to_thread.run_sync(self._append, command)
        deadline = time.monotonic() + self.timeout
        while True:
            outcomes = self._acknowledged(sequence)
            if len(outcomes) == self.workers or time.monotonic() > deadline:
                return outcomes
            await anyio.sleep(POLL_SECONDS)
            self._refuse_when_shutting_down()

    def _refuse_when_shutting_down(self) -> None:
        if self._shutting_down.is_set():
            raise ShuttingDown("this worker is shutting down")

    # -- the log ----------------------------------------------------------------------------

    def _append(self, command: Command) -> int:
        """Write ``command`` at the end of the log; return its number (its line, from 0)."""
        assert self.directory is not None
        with (self.directory / LOG).open("a+") as log_file:
            fcntl.flock(log_file, fcntl.LOCK_EX)  # one writer at a time, whichever worker
            log_file.seek(0)
            sequence = sum(1 for _ in log_file)
            log_file.write(json.dumps(asdict(command)) + "\n")
            log_file.flush()
        return sequence

    def _acknowledged(self, sequence: int) -> dict[int, str]:
        assert self.directory is not None
        outcomes = {}
        for worker in range(self.workers):
            with contextlib.suppress(FileNotFoundError):
                outcomes[worker] = (self.directory / "acks" / f"{sequence}.{worker}").read_text()
        return outcomes

    def _follow(self, offset: int) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                offset = self._applied = self._catch_up(offset)
            except Exception:  # a broken line must not stop the worker from following
                log.exception("cannot follow the LoRA command log")

    def _catch_up(self, offset: int) -> int:
        """Apply the commands after byte ``offset`` of the log; return the new offset."""
        assert self.directory is not None
        with (self.directory / LOG).open("rb") as log_file:
            log_file.seek(offset)
            lines = log_file.read()
            complete = lines[: lines.rfind(b"\n") + 1]  # a line still being written waits for the next look
            if not complete:
                return offset
            log_file.seek(0)
            sequence = log_file.read(offset).count(b"\n")  # the number of the first new command
        for number, line in enumerate(complete.splitlines(), start=sequence):
            outcome = self._outcome(Command(**json.loads(line)))
            self._acknowledge(number, outcome)
        return offset + len(complete)

    def _acknowledge(self, number: int, outcome: str) -> None:
        """Publish this worker's outcome of command ``number`` whole: readers never see a half-written file."""
        assert self.directory is not None
        acks = self.directory / "acks"
        partial = acks / f".{number}.{self.worker}.partial"
        partial.write_text(outcome)
        partial.replace(acks / f"{number}.{self.worker}")  # a rename is atomic on one filesystem

    def _outcome(self, command: Command) -> str:
        try:
            self.apply(command)
        except Exception as error:  # LoraError, or whatever else loading raised: the answer says it
            if not isinstance(error, LoraError):
                log.exception("LoRA %s of %s failed", command.op, command.name)
            return one_line(error)
        return OK
