"""A worker that runs each edit on several ranks: starting them, sending them calls, noticing when one dies.

With ``IMGEDIT_ULYSSES_DEGREE``, ``IMGEDIT_RING_DEGREE`` or ``IMGEDIT_TP_DEGREE``
above 1, one BentoML worker owns that many devices. The worker process itself
is rank 0: it serves HTTP and runs the engine. It starts the other ranks as
child processes (``python -m imgedit.ranks.main``), which load the same
model (rank 0 sends each the :class:`RankSetup`) and wait for calls. The ranks form a torch.distributed group (NCCL on
CUDA, gloo on the CPU) for the model's own collectives, plus a gloo group for
agreeing on each step (:mod:`imgedit.ranks.lockstep`).

* Calls: for each pipeline call the engine makes, rank 0 sends every rank the
  call (pickled: prompts, PIL images, numbers, generators with their state;
  the pipeline named by role) over the rank's standard input, then runs it
  itself; every rank runs it in step with the others. Idle ranks wait on that
  pipe, which needs no timeout.
* Rank 0 learns of a rank's death at once: its reply pipe reaches end-of-file.
  A rank that dies, or ranks that stop agreeing (a checkpoint failing or
  waiting past ``IMGEDIT_RANK_TIMEOUT``), make the worker stop the server with
  one line and exit with status 1, so that its supervisor restarts it; the other
  ranks are killed first. The extra ranks die with rank 0 (the parent-death
  signal, and end-of-file on their input) and ignore SIGTERM and SIGINT: rank 0
  drains and then stops them.
* Devices: worker ``w`` of ``R`` ranks owns the visible GPUs ``w*R`` to
  ``w*R+R-1``; :func:`claim_gpus` narrows ``CUDA_VISIBLE_DEVICES`` to them
  before CUDA starts, so rank ``r`` uses ``cuda:r`` (which is also the device
  diffusers derives from the rank).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from PIL import Image

import imgedit
from imgedit.logs import current_request_id, get_logger
from imgedit.model.call import PipelineCall, StepHook
from imgedit.model.families import Family
from imgedit.model.pipeline import denoiser
from imgedit.ranks.lockstep import CallMessage, Lockstep, RankFailure, RanksOutOfStep, pack, pipeline_roles
from imgedit.ranks.plans import RankLayout

log = get_logger(__name__)

#: What rank 0 tells a rank in each process's environment (not ``IMGEDIT_``-prefixed: they are no settings).
RANK_VARIABLE = "_IMGEDIT_RANK"
RANKS_VARIABLE = "_IMGEDIT_RANKS"
WORKER_VARIABLE = "_IMGEDIT_RANK_WORKER"
STORE_VARIABLE = "_IMGEDIT_RANK_STORE"
REPLIES_VARIABLE = "_IMGEDIT_RANK_REPLIES_FD"
PARENT_VARIABLE = "_IMGEDIT_RANK_PARENT"
#: Messages on a rank's input besides calls.
GO, STOP = "go", "stop"
#: Seconds a rank gets to finish its call and exit when the worker stops, before it is killed.
STOP_SECONDS = 30
#: Seconds rank 0 waits, after its ranks fell out of step, for a dead rank to explain why.
DEATH_NOTICE_SECONDS = 5


class RankStartupError(Exception):
    """Another rank could not start; the message is one line saying which and why."""


#: Loads and prepares this rank's copy of the model on device slot ``slot`` (the rank): called with the slot
#: and a callable that returns once every rank has loaded it (the ranks split the model together after).
PrepareModel = Callable[[int, Callable[[], None]], Family]


@dataclass(frozen=True, kw_only=True)
class RankSetup:
    """What every extra rank of a worker needs to start, sent to it by rank 0 (pickled).

    Attributes:
        layout: how an edit is split.
        device: ``IMGEDIT_DEVICE``; rank ``r`` runs on device slot ``r``.
        timeout: ``IMGEDIT_RANK_TIMEOUT``, seconds a collective may wait.
        log_level: ``IMGEDIT_LOG_LEVEL``.
        prepare: loads the model; a module-level function (or a partial of one), so that it pickles.
    """

    layout: RankLayout
    device: str
    timeout: float
    log_level: str
    prepare: PrepareModel


def claim_gpus(ranks: int, device: str, worker: int) -> None:
    """In a worker of several ranks on CUDA, keep only its own GPUs visible (call before CUDA starts).

    BentoML shows every worker all the GPUs the service asked for; worker ``w``
    takes its ``R`` consecutive ones, so that rank ``r`` is ``cuda:r`` in every
    one of its processes.
    """
    if ranks == 1 or device == "cpu":
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(index) for index in range((worker + 1) * ranks)]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[worker * ranks : (worker + 1) * ranks])


def join_group(rank: int, ranks: int, store: Any, device: torch.device, timeout: float) -> Any:
    """Join the worker's process group as ``rank``; return the gloo group the checkpoints use."""
    # Every rank of a worker is on this machine: gloo talks over loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "gloo" if device.type == "cpu" else "cpu:gloo,cuda:nccl"
    limit = timedelta(seconds=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=ranks, timeout=limit)
    return dist.new_group(backend="gloo", timeout=limit)


def cpu_threads(ranks: int) -> int:
    """Intra-op threads per CPU rank, so that the ranks share the cores rather than fight over them."""
    return max(1, (os.cpu_count() or 1) // ranks)


@dataclass(kw_only=True)
class _Rank:
    """One extra rank, as rank 0 sees it."""

    index: int
    process: subprocess.Popen[bytes]
    calls: IO[bytes]
    replies: IO[bytes]
    reports: list[tuple[str, ...]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ended: bool = False


class RankGroup:
    """Rank 0's side of a worker's ranks: the engine's runner (:meth:`invoke`, :meth:`close`).

    Args:
        setup: what every rank needs to start; each loads the model with it.
        worker: this worker's index, for the messages.
        device: rank 0's device.
        on_fatal: called with a one-line message when a rank dies or the ranks
            part ways while serving; the server stops it (it is expected not to return).
        environment: extra environment variables for the ranks (the tests' hooks).
    """

    def __init__(
        self,
        setup: RankSetup,
        worker: int,
        device: torch.device,
        *,
        on_fatal: Callable[[str], None],
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.setup = setup
        self.worker = worker
        self.layout = setup.layout
        self.device = device
        self.on_fatal = on_fatal
        self.environment = dict(environment or {})
        self._ranks: list[_Rank] = []
        self._serving = False
        self._closing = False
        self._fatal_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._failed = threading.Event()
        self._roles: dict[str, Any] = {}
        self._lockstep: Lockstep | None = None
        self._directory: str | None = None

    # -- start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the other ranks and form the process group with them (rank 0 is this process).

        Raises:
            RankStartupError: a rank failed to start.
        """
        ranks = self.layout.ranks
        # The ranks meet through a file only this user can reach (a TCP store would listen on every interface).
        self._directory = tempfile.mkdtemp(prefix="imgedit-ranks-")
        store_path = os.path.join(self._directory, "store")
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(ranks))
        log.info("starting %d more ranks (%s)", ranks - 1, self.layout.describe())
        for index in range(1, ranks):
            self._ranks.append(self._spawn(index, store_path))
        self._await("started")
        store = dist.FileStore(store_path, ranks)
        self._control = join_group(0, ranks, store, self.device, self.setup.timeout)

    def _spawn(self, index: int, store_path: str) -> _Rank:
        reply_read, reply_write = os.pipe()
        # Wherever the server runs from (a Bento's directory, say), the rank imports this same imgedit.
        inherited = self.environment.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
        paths = [str(Path(imgedit.__file__).resolve().parents[1]), inherited]
        environment = {
            **os.environ,
            **self.environment,
            "PYTHONPATH": os.pathsep.join(path for path in paths if path),
            RANK_VARIABLE: str(index),
            RANKS_VARIABLE: str(self.layout.ranks),
            WORKER_VARIABLE: str(self.worker),
            STORE_VARIABLE: store_path,
            REPLIES_VARIABLE: str(reply_write),
            PARENT_VARIABLE: str(os.getpid()),
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "imgedit.ranks.main"],
                stdin=subprocess.PIPE,
                env=environment,
                pass_fds=(reply_write,),
            )
        finally:
            os.close(reply_write)  # the rank holds the only writer: its death is end-of-file here
        assert process.stdin is not None
        rank = _Rank(index=index, process=process, calls=process.stdin, replies=os.fdopen(reply_read, "rb"))
        self._send(rank, self.setup)
        threading.Thread(target=self._watch, args=(rank,), name=f"imgedit-rank-{index}", daemon=True).start()
        return rank

    def loaded(self) -> None:
        """Between loading and splitting the model: wait until every rank has loaded it, then let them go on.

        Raises:
            RankStartupError: a rank could not load it; the message is that rank's line.
        """
        self._await("loaded")
        for rank in self._ranks:
            self._send(rank, GO)

    def attach(self, family: Family) -> None:
        """Serve calls of ``family``'s pipelines, once every rank has set up its own copy."""
        self._await("ready")
        self._roles = pipeline_roles(family)
        self._lockstep = Lockstep(0, self._control, denoiser(family.pipeline))
        self._serving = True

    def _await(self, stage: str) -> None:
        """Wait until every rank reports ``stage``, or fails, or dies.

        Start-up has no time limit here, as with one rank: loading may take long.
        """
        for rank in self._ranks:
            with rank.changed:
                rank.changed.wait_for(functools.partial(_reported, rank, stage))
            failure = next((report[1] for report in rank.reports if report[0] == "failed"), None)
            if failure is not None:
                raise RankStartupError(f"rank {rank.index}: {failure}")
            if not any(report[0] == stage for report in rank.reports):
                raise RankStartupError(f"rank {rank.index} {_how_it_ended(rank.process)} while starting")

    # -- serving ----------------------------------------------------------------------------

    def invoke(self, call: PipelineCall, on_step: StepHook | None = None) -> list[Image.Image]:
        """Run ``call`` on every rank; rank 0's images come back (the engine's runner)."""
        if self._lockstep is None or self._failed.is_set():
            raise RankFailure("the ranks of this worker are not serving")
        message = pack(CallMessage(call, current_request_id()), self._roles)
        for rank in self._ranks:
            self._send(rank, message)
        try:
            return self._lockstep.run(call, on_step)
        except RanksOutOfStep as error:
            # A dead rank explains itself better than a failed collective: give its watcher a moment to say so.
            if not self._failed.wait(DEATH_NOTICE_SECONDS):
                self._fatal(f"the ranks of worker {self.worker} fell out of step ({error})")
            raise RankFailure("the ranks of this worker fell out of step") from None

    def close(self, *, kill: bool = False) -> None:
        """Stop the other ranks and leave the process group.

        Args:
            kill: kill them at once (a failed start-up) rather than let them finish the call they run.
        """
        self._closing = True
        for rank in self._ranks:
            if kill:
                rank.process.kill()
            with contextlib.suppress(Exception):  # a rank that is gone already
                self._send(rank, STOP)
                rank.calls.close()
        for rank in self._ranks:
            try:
                rank.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                rank.process.kill()
                rank.process.wait()
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    # -- rank deaths ------------------------------------------------------------------------

    def _send(self, rank: _Rank, message: object) -> None:
        try:
            with self._send_lock:
                pickle.dump(message, rank.calls, protocol=pickle.HIGHEST_PROTOCOL)
                rank.calls.flush()
        except (BrokenPipeError, ValueError):  # ValueError: its pipe is closed already
            if not self._serving:
                raise RankStartupError(f"rank {rank.index} {_how_it_ended(rank.process)} while starting") from None
            if not self._closing:
                self._failed.wait(DEATH_NOTICE_SECONDS)  # its watcher reports it
            raise RankFailure(f"rank {rank.index} is gone") from None

    def _watch(self, rank: _Rank) -> None:
        """Collect ``rank``'s reports until its pipe closes, then treat its end as fatal unless the worker stops."""
        with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
            while True:
                report = pickle.load(rank.replies)
                with rank.changed:
                    rank.reports.append(report)
                    rank.changed.notify_all()
        rank.process.wait()
        with rank.changed:
            rank.ended = True
            rank.changed.notify_all()
        if self._serving and not self._closing:
            self._fatal(f"rank {rank.index} of worker {self.worker} {_how_it_ended(rank.process)}")

    def _fatal(self, message: str) -> None:
        with self._fatal_lock:
            if self._failed.is_set() or self._closing:  # once is enough; and stopping ranks is no failure
                return
            self._failed.set()
            for rank in self._ranks:
                with contextlib.suppress(OSError):
                    rank.process.kill()
            self.on_fatal(message)


def _reported(rank: _Rank, stage: str) -> bool:
    """Whether ``rank`` reported ``stage`` or a failure, or ended."""
    return rank.ended or any(report[0] in (stage, "failed") for report in rank.reports)


def _how_it_ended(process: subprocess.Popen[bytes]) -> str:
    code = process.poll()
    if code is None:
        return "stopped answering"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
