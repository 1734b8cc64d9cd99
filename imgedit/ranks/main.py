"""An extra rank of a worker: ``python -m imgedit.ranks.main``, started by rank 0 (:mod:`imgedit.ranks.group`).

It loads the model as rank 0 does (with the :class:`~imgedit.ranks.group.RankSetup`
rank 0 sends first), reports each stage of its start-up on its reply pipe, then
runs every call rank 0 sends on its standard input, in step with the other
ranks, until rank 0 says stop or goes away. It never answers
signals itself: it ends when rank 0 tells it to, when rank 0 dies (the
parent-death signal, or end-of-file on its input), or when the ranks part ways.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import traceback
from typing import IO, Any

import torch
import torch.distributed as dist

from imgedit.errors import StartupError, one_line
from imgedit.logs import configure_logging, get_logger
from imgedit.model.devices import pick_device
from imgedit.model.pipeline import denoiser
from imgedit.ranks.group import (
    GO,
    PARENT_VARIABLE,
    RANK_VARIABLE,
    RANKS_VARIABLE,
    REPLIES_VARIABLE,
    STOP,
    STORE_VARIABLE,
    WORKER_VARIABLE,
    RankSetup,
    cpu_threads,
    join_group,
)
from imgedit.ranks.lockstep import Lockstep, RanksOutOfStep, pipeline_roles, request_context, unpack

log = get_logger(__name__)
_PR_SET_PDEATHSIG = 1


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rank 0 drains, then stops this rank
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(os.environ[PARENT_VARIABLE]))
    rank = int(os.environ[RANK_VARIABLE])
    ranks = int(os.environ[RANKS_VARIABLE])
    calls = sys.stdin.buffer
    replies = os.fdopen(int(os.environ[REPLIES_VARIABLE]), "wb")
    setup = _receive(calls)
    assert isinstance(setup, RankSetup)
    configure_logging(setup.log_level)
    try:
        device = pick_device(setup.device, rank)
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads(ranks))
        _report(replies, "started")
        store = dist.FileStore(os.environ[STORE_VARIABLE], ranks)
        control = join_group(rank, ranks, store, device, setup.timeout)
        family = setup.prepare(rank, lambda: _loaded(replies, calls))
    except _Stopped:
        sys.exit(0)
    except StartupError as error:
        _fail(replies, str(error))
    except Exception as error:
        traceback.print_exc()
        _fail(replies, f"start-up failed: {type(error).__name__}: {one_line(error)}")
    lockstep = Lockstep(rank, control, denoiser(family.pipeline))
    roles = pipeline_roles(family)
    _report(replies, "ready")
    while True:
        received = _receive(calls)
        if received == STOP:
            break
        assert isinstance(received, bytes), "rank 0 sends packed calls"
        message = unpack(received, roles)
        with request_context(message.request_id):
            try:
                lockstep.run(message.call)
            except RanksOutOfStep as error:
                worker = os.environ[WORKER_VARIABLE]
                print(f"imgedit: rank {rank} of worker {worker}: the ranks fell out of step ({error})", file=sys.stderr)
                os._exit(1)
    dist.destroy_process_group()
    os._exit(0)  # nothing left to finalise; the interpreter's own shutdown would only make rank 0 wait


class _Stopped(Exception):
    """Rank 0 stopped the worker (or went away) before this rank started serving."""


def _receive(calls: IO[bytes]) -> Any:
    try:
        return pickle.load(calls)
    except EOFError:  # rank 0 is gone
        os._exit(0)


def _loaded(replies: IO[bytes], calls: IO[bytes]) -> None:
    """Tell rank 0 the model is loaded and checked; wait until every rank is, before splitting it."""
    _report(replies, "loaded")
    if _receive(calls) != GO:
        raise _Stopped


def _report(replies: IO[bytes], *report: str) -> None:
    pickle.dump(report, replies)
    replies.flush()


def _fail(replies: IO[bytes], message: str) -> None:
    _report(replies, "failed", message)
    sys.exit(1)


def _die_with_parent(parent: int) -> None:
    """Be killed when rank 0's process ends, however it ends (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


if __name__ == "__main__":
    main()
