"""One pipeline call run by every rank of a worker at once, the ranks agreeing as it goes.

Every rank runs the same call with the same arguments, and the denoiser's
collectives (Ulysses all-to-all, ring passes, tensor-parallel reductions) only
complete when every rank takes part. So the ranks must never part ways: when
rank 0 stops a run (its client left, its deadline passed, the server drains) or
any rank fails, all of them must leave the call at the same point, or the
others would wait in a collective forever.

They agree at checkpoints: before every forward pass of the denoiser, before
every swap of guidance's branches (``IMGEDIT_CFG_PARALLEL``), after every
denoising step, and when the call ends. A checkpoint is one all-reduce
(the maximum) of each rank's status on a gloo group of its own, apart from the
model's collectives: a rank that failed goes straight to its next checkpoint,
which meets the others' next one, and a non-zero result makes every rank leave
the call there. A failure can only strand the others inside a collective when
it happens within a forward pass, between two of the model's collectives; the
checkpoint then times out (``IMGEDIT_RANK_TIMEOUT``) and the ranks are out of
step (:class:`RanksOutOfStep`), which the worker does not survive.
"""

from __future__ import annotations

import contextlib
import gc
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image

from imgedit.errors import one_line
from imgedit.logs import RequestContext, current_request, get_logger
from imgedit.model.branches import checkpoint_swaps
from imgedit.model.call import PipelineCall, RunCancelled, StepHook
from imgedit.model.families import Family
from imgedit.model.pipeline import Pipeline

log = get_logger(__name__)

#: A rank's status at a checkpoint; the agreed status is the highest.
OK, STOP, OUT_OF_MEMORY, FAILED = 0, 1, 2, 3
_OUTCOMES = {STOP: "stopped it", OUT_OF_MEMORY: "ran out of device memory", FAILED: "failed"}


class RanksOutOfStep(Exception):
    """A checkpoint failed or timed out: the ranks no longer run the same call, and the worker cannot go on."""


class RankFailure(RuntimeError):
    """Another rank failed the call; the message names it and says how."""


@dataclass(frozen=True)
class CallMessage:
    """What rank 0 sends the other ranks to run: the call, and the id of the request it serves."""

    call: PipelineCall
    request_id: str


def pipeline_roles(family: Family) -> dict[str, Pipeline]:
    """The pipelines calls may name, by role: ``edit``, and ``inpaint`` when the family has one.

    Every rank builds the same family from the same model, so a role names
    the same pipeline on each.
    """
    roles = {"edit": family.pipeline}
    if family.inpaint_pipeline is not None:
        roles["inpaint"] = family.inpaint_pipeline
    return roles


def pack(message: CallMessage, roles: dict[str, Pipeline]) -> bytes:
    """``message`` as bytes another rank can :func:`unpack`: pickled whole, but for its pipeline, sent by role.

    Everything else pickles and rebuilds exactly: prompts, PIL images, numbers,
    and CPU generators with their state. The pipeline is a persistent id
    (pickle's own way to refer to objects outside the pickle): its role.

    Raises:
        ValueError: the call runs a pipeline that has no role, so no rank can rebuild it.
    """
    named = {id(pipeline): role for role, pipeline in roles.items()}
    if id(message.call.pipeline) not in named:
        raise ValueError(f"a call of {type(message.call.pipeline).__name__} that no rank can rebuild")
    buffer = io.BytesIO()
    _PipelinesByRole(buffer, named).dump(message)
    return buffer.getvalue()


def unpack(data: bytes, roles: dict[str, Pipeline]) -> CallMessage:
    """The message :func:`pack` made, its call running this rank's pipeline of the same role."""
    message = _PipelinesFromRoles(io.BytesIO(data), roles).load()
    assert isinstance(message, CallMessage)
    return message


class _PipelinesByRole(pickle.Pickler):
    def __init__(self, file: io.BytesIO, named: dict[int, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.named = named

    def persistent_id(self, item: object) -> str | None:
        return self.named.get(id(item))


class _PipelinesFromRoles(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, roles: dict[str, Pipeline]) -> None:
        super().__init__(file)
        self.roles = roles

    def persistent_load(self, role: Any) -> Pipeline:
        return self.roles[role]


def status_of(error: BaseException | None) -> int:
    if error is None:
        return OK
    if isinstance(error, RunCancelled):
        return STOP
    if isinstance(error, torch.OutOfMemoryError):
        return OUT_OF_MEMORY
    return FAILED


class _Agreed(Exception):
    """Raised inside the call on every rank once a checkpoint agreed to leave it."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Lockstep:
    """Runs pipeline calls on this rank in step with the others.

    Args:
        rank: this process's rank (0 runs the engine and sees the outcome).
        group: the gloo group the checkpoints use (not the model's).
        model: the denoiser, whose every forward pass starts with a checkpoint.
    """

    def __init__(self, rank: int, group: Any, model: torch.nn.Module) -> None:
        self.rank = rank
        self.group = group
        self._running = False
        #: The last step finished and the steps of the call, for logs.
        self.progress = (0, 0)
        model.register_forward_pre_hook(self._before_forward)
        checkpoint_swaps(model, self._checkpoint)

    def agree(self, status: int) -> int:
        """The highest status of every rank at this checkpoint.

        Raises:
            RanksOutOfStep: the collective failed or timed out.
        """
        flag = torch.tensor([status], dtype=torch.int32)
        try:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        except Exception as error:  # gloo's timeout, or a peer that is gone
            raise RanksOutOfStep(one_line(error)) from None
        return int(flag.item())

    def run(self, call: PipelineCall, on_step: StepHook | None = None) -> list[Image.Image]:
        """Run ``call`` here while the other ranks run it.

        Args:
            on_step: rank 0's step hook (the engine's); raising from it stops every rank.

        Returns:
            The images (the other ranks' are the same and unused).

        Raises:
            RanksOutOfStep: the ranks parted ways.
            BaseException: on rank 0, its own failure, or for another rank's a
                :class:`torch.OutOfMemoryError` or :class:`RankFailure`. The
                other ranks raise only :class:`RanksOutOfStep`; they return
                an empty list when the call failed.
        """
        local: BaseException | None = None
        self.progress = (0, 0)

        def after_step(step: int, total: int, latents: torch.Tensor) -> None:
            nonlocal local
            self.progress = (step + 1, total)
            if on_step is not None:
                try:
                    on_step(step, total, latents)
                except BaseException as error:  # agreed on below, then raised again
                    local = error
            agreed = self.agree(status_of(local))
            if agreed != OK:
                raise _Agreed(agreed)

        images: list[Image.Image] = []
        with self._checking_forwards():
            try:
                images = call.invoke(after_step)
            except _Agreed as left:
                agreed = left.status
            except RanksOutOfStep:
                raise
            except BaseException as error:  # this rank's own failure: the others learn it at their next checkpoint
                local = error
                agreed = self.agree(status_of(error))
            else:
                agreed = self.agree(OK)
        if agreed == OK:
            return images
        return self._after_failure(agreed, local)

    def _after_failure(self, agreed: int, local: BaseException | None) -> list[Image.Image]:
        """Every rank learns which rank ended the call and how; rank 0 raises it."""
        reports: list[Any] = [None] * dist.get_world_size(self.group)
        text = f"{type(local).__name__}: {one_line(local)}" if local is not None else ""
        try:
            dist.all_gather_object(reports, (status_of(local), text, self.progress), group=self.group)
        except Exception as error:
            raise RanksOutOfStep(one_line(error)) from None
        rank, (status, text, _) = max(enumerate(reports), key=lambda item: (item[1][0], -item[0]))
        step, total = max(report[2] for report in reports)  # a rank that failed mid-step missed its checkpoint
        if agreed == OUT_OF_MEMORY:
            free_device_memory()
        if self.rank != 0:
            log.info(
                "rank %d left the call after step %d/%d: rank %d %s", self.rank, step, total, rank, _OUTCOMES[agreed]
            )
            return []
        if local is not None:
            raise local
        if status == OUT_OF_MEMORY:
            raise torch.OutOfMemoryError(f"rank {rank}: {text}")
        raise RankFailure(f"rank {rank} failed: {text}")

    @contextlib.contextmanager
    def _checking_forwards(self) -> Iterator[None]:
        self._running = True
        try:
            yield
        finally:
            self._running = False

    def _before_forward(self, module: Any, args: Any) -> None:
        """A checkpoint before each forward pass: a rank that failed before it must not leave the others inside it."""
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Agree that every rank is well, or leave the call (before each forward pass, and each swap of branches)."""
        if self._running:
            agreed = self.agree(OK)
            if agreed != OK:
                raise _Agreed(agreed)


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Log lines of this rank carry the id of the request rank 0 runs."""
    token = current_request.set(RequestContext(request_id))
    try:
        yield
    finally:
        current_request.reset(token)


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
