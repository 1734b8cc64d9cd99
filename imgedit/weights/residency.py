"""Several models sharing one device (``IMGEDIT_MODELS``): which of them stay on it, and swapping the others in.

Every served model is loaded on the device once, alone, so that the loader's
memory plan checks it there, and then waits in host memory
(:meth:`Residency.park`). :func:`plan_residency` then decides how many may be on
the device at once (``IMGEDIT_RESIDENT_MODELS``, by default as many as fit), and
the first of them are moved back. While serving, the engine thread calls
:meth:`Residency.bring` before each run: a model that is not on the device
replaces the one used longest ago. Moving is PyTorch's ``Module.to``, so the
weights, the adapters loaded into them and their quantized tensors move as they
are; nothing is read from disk again.

The plan counts the worst case: the largest models on the device together, with
the working memory of the largest. On the CPU the device is host memory: a swap
moves nothing, but the bookkeeping (and which job runs next) is the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from imgedit.logs import get_logger
from imgedit.weights.memory import RESERVE_BYTES, RESERVE_SHARE, MemoryPlanError, gib, host_available_bytes

log = get_logger(__name__)
HOST = torch.device("cpu")


class Movable(Protocol):
    """What moves a model between memories: a diffusers pipeline (or a module)."""

    def to(self, device: torch.device) -> Any: ...


def working_memory(weights: int) -> int:
    """The working memory a model of ``weights`` bytes needs beside them (the memory plan's reserve)."""
    return RESERVE_BYTES + int(RESERVE_SHARE * weights)


@dataclass(frozen=True)
class ResidencyPlan:
    """How many models stay on the device at once, and what that takes.

    Attributes:
        slots: models on the device at once.
        device_need: bytes the largest ``slots`` models and one run's working memory take there, at worst.
    """

    slots: int
    device_need: int


def plan_residency(
    sizes: Mapping[str, int], *, wanted: int | None, available: int | None, where: str, kept: int = 0
) -> ResidencyPlan:
    """Decide how many of the models may be on the device at once, or refuse a set that cannot fit.

    Host memory is not counted here: at start-up every model waits there at once (:meth:`Residency.park` checks
    that), which is more than it ever holds later.

    Args:
        sizes: each served model's name and the bytes of its weights, as loaded.
        wanted: ``IMGEDIT_RESIDENT_MODELS``; None for as many as fit (at least one).
        available: bytes the models may use on the device; None on the CPU, where the device is host memory
            and the loader checked each model as it loaded.
        where: the device, for the message.
        kept: bytes on the device whichever models are there: every model's encoding cache at its limit
            (kept encodings stay on the device while their model waits in host memory).

    Raises:
        MemoryPlanError: one line naming the models that would be on the device together, and the most that fit.
    """
    largest_first = sorted(sizes.items(), key=lambda item: item[1], reverse=True)

    def need(slots: int) -> int:
        on_device = [size for _, size in largest_first[:slots]]
        return sum(on_device) + working_memory(max(on_device, default=0)) + kept

    if wanted is not None and wanted > len(sizes):
        raise MemoryPlanError(f"IMGEDIT_RESIDENT_MODELS={wanted}: only {len(sizes)} models are served")
    fitting = [slots for slots in range(1, len(sizes) + 1) if available is None or need(slots) <= available]
    slots = wanted if wanted is not None else max(fitting, default=1)
    if slots in fitting:
        return ResidencyPlan(slots, need(slots))
    together = ", ".join(f"{name} ({gib(size)})" for name, size in largest_first[:slots])
    advice = (
        f"at most {max(fitting)} fit at once (IMGEDIT_RESIDENT_MODELS={max(fitting)})"
        if fitting
        else "not even the largest fits with its working memory"
    )
    setting = f"IMGEDIT_RESIDENT_MODELS={slots}" if wanted is not None else "IMGEDIT_MODELS"
    raise MemoryPlanError(
        f"{setting}: {together} may be on {where} together and need about {gib(need(slots))} with working memory "
        "and kept encodings, "
        f"and {gib(available or 0)} is available; {advice}. IMGEDIT_MEMORY_CHECK=false starts anyway"
    )


class Residency:
    """The models of one device, and which of them are on it now.

    Only the engine thread moves models (:meth:`bring`, between runs); any thread may ask :meth:`on_device`.

    Args:
        device: where the models run.
        on_swap: called after each model brought in, with its name and the seconds the move took.
    """

    def __init__(self, device: torch.device, on_swap: Callable[[str, float], None] | None = None) -> None:
        self.device = device
        self.modules: dict[str, Movable] = {}
        self.slots = 0  # set by keep(), once every model was added and parked
        self.on_swap = on_swap
        self._lock = threading.Lock()
        self._resident: list[str] = []  # used longest ago first

    def add(self, name: str, module: Movable) -> None:
        """Count model ``name``, loaded on the device (at start-up)."""
        self.modules[name] = module
        with self._lock:
            self._resident.append(name)

    def on_device(self, name: str) -> bool:
        """Whether model ``name`` is on the device now (a run for it starts without a swap)."""
        with self._lock:
            return name in self._resident

    def resident(self) -> list[str]:
        """The models on the device now, the one used longest ago first."""
        with self._lock:
            return list(self._resident)

    def park(self, name: str, size: int, check: bool = True) -> None:
        """Move model ``name``, of ``size`` bytes, to host memory (at start-up, after it loaded and was checked on
        the device).

        Args:
            check: refuse when host memory cannot hold it (``IMGEDIT_MEMORY_CHECK``); else only log it.

        Raises:
            MemoryPlanError: host memory cannot hold it.
        """
        free = host_available_bytes() if self.device != HOST else size
        if size > free:
            message = (
                f"{name} ({gib(size)}) would wait in host memory beside the others, and {gib(free)} is free; "
                "serve fewer or smaller models. IMGEDIT_MEMORY_CHECK=false starts anyway"
            )
            if check:
                raise MemoryPlanError(message)
            log.warning("memory check off (IMGEDIT_MEMORY_CHECK=false): %s", message)
        self._move(name, HOST)
        with self._lock:
            self._resident.remove(name)

    def keep(self, slots: int, first: list[str]) -> None:
        """From now on at most ``slots`` models are on the device: bring the ``first`` of them (at start-up)."""
        self.slots = slots
        for name in first[:slots]:
            self.bring(name)

    def bring(self, name: str) -> None:
        """Make model ``name`` ready to run: on the device, sending the one used longest ago to host memory if the
        device holds ``slots`` models already. Call it between runs, on the engine thread."""
        with self._lock:
            if name in self._resident:
                self._resident.remove(name)
                self._resident.append(name)
                return
            leaving = self._resident[: max(0, len(self._resident) - self.slots + 1)]
        started = time.perf_counter()
        for other in leaving:
            self._move(other, HOST)
            with self._lock:
                self._resident.remove(other)
        try:
            self._move(name, self.device)
        except BaseException:  # out of memory, say: back to host memory, so no half of it stays unaccounted
            self._move(name, HOST)
            raise
        with self._lock:
            self._resident.append(name)
        seconds = time.perf_counter() - started
        log.info("swapped in %s (out: %s) in %.2f s", name, ", ".join(leaving) or "none", seconds)
        if self.on_swap is not None:
            self.on_swap(name, seconds)

    def _move(self, name: str, device: torch.device) -> None:
        if self.device == HOST:
            return  # already there: a pipeline's `to` walks every module even then (8 ms for a tiny model here)
        self.modules[name].to(device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if device == HOST:
                torch.cuda.empty_cache()  # the leaving weights' blocks go back before others are allocated
