"""LoRAs chosen per request: loaded once, kept unfused, switched between runs.

LoRAs are registered by name: at start-up from ``IMGEDIT_LORA_ADAPTERS``, and
while serving by the load endpoint or a request's path under ``IMGEDIT_LORA_DIR``.
Before each run the engine calls :meth:`LoraRegistry.activate` with the LoRAs
its requests chose: it turns those on at their scales (``set_adapters``) or, when
a run chose none, turns LoRA off (``disable_lora``), so the base layers alone run
and the output is exactly the base model's. LoRAs of ``IMGEDIT_LORA`` that
were not fused are always on, beside whatever a request chooses.

Loading, unloading and switching change the model, so they run on the engine
thread, between runs; the bookkeeping (which names exist, how many queued
requests still need each) is shared with the event loop under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from imgedit import metrics
from imgedit.edit import Loras
from imgedit.logs import get_logger
from imgedit.lora.sources import LoraError, LoraPipeline, LoraSpec, load_lora, takes_loras
from imgedit.model.pipeline import Pipeline

log = get_logger(__name__)


class UnknownLora(LoraError):
    """A request names a LoRA that is not loaded (or is being unloaded)."""


@dataclass(frozen=True)
class Registered:
    """A LoRA that requests may choose, and where it came from."""

    name: str
    spec: LoraSpec
    created: int


class LoraRegistry:
    """The LoRAs one pipeline holds, and which of them are on.

    Args:
        pipeline: the loaded pipeline (its inpainting twin shares the same modules).
        max_loras: the most LoRAs held at once (``IMGEDIT_MAX_LORAS``).
        always_on: LoRAs of ``IMGEDIT_LORA`` left unfused, with their scales.
        refusal: why this model cannot take LoRAs at all (None: it can).
    """

    def __init__(
        self, pipeline: Pipeline, *, max_loras: int, always_on: Loras = (), refusal: str | None = None
    ) -> None:
        self.pipeline = pipeline
        self.max_loras = max_loras
        self.always_on = always_on
        self.refusal = refusal if refusal is not None else _refusal(pipeline)
        #: Names taken elsewhere on the server (served models, other models' LoRAs): a request's model may name it.
        self.reserved: frozenset[str] = frozenset()
        self._lock = threading.Condition()
        self._entries: dict[str, Registered] = {}
        self._leaving: set[str] = set()
        self._in_use: Counter[str] = Counter()
        self._active: Loras | None = None  # unknown until the first switch

    # -- what requests see (the event loop) -------------------------------------------------

    def names(self) -> list[str]:
        """The LoRAs requests may choose, in the order they were loaded."""
        with self._lock:
            return [name for name in self._entries if name not in self._leaving]

    def registered(self) -> list[Registered]:
        with self._lock:
            return [entry for name, entry in self._entries.items() if name not in self._leaving]

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._entries and name not in self._leaving

    def selection(self, choices: Sequence[tuple[str, float | None]]) -> Loras:
        """``choices`` (name, scale or None for the loaded one) as the LoRAs a run switches on.

        Raises:
            UnknownLora: a name is not loaded, or is being unloaded.
            LoraError: this model takes no LoRAs.
        """
        if choices and self.refusal:
            raise LoraError(self.refusal)
        chosen = []
        with self._lock:
            for name, scale in choices:
                entry = self._entries.get(name)
                if entry is None or name in self._leaving:
                    loaded = ", ".join(n for n in self._entries if n not in self._leaving) or "none"
                    raise UnknownLora(f"no LoRA adapter {name!r} is loaded (loaded: {loaded})")
                chosen.append((name, entry.spec.scale if scale is None else scale))
        return tuple(chosen)

    def acquire(self, loras: Loras) -> None:
        """Count a request that will run with ``loras``, so that unloading one waits for it."""
        with self._lock:
            self._in_use.update(name for name, _ in loras)
        for name, _ in loras:
            metrics.lora_requests.labels(name).inc()

    def release(self, loras: Loras) -> None:
        with self._lock:
            self._in_use.subtract(name for name, _ in loras)
            self._lock.notify_all()

    def retire(self, name: str) -> None:
        """Refuse ``name`` to new requests, then wait until no admitted request still needs it.

        It blocks: call it from a thread of its own, never the event loop or the engine thread.
        """
        with self._lock:
            if name not in self._entries:
                raise UnknownLora(f"no LoRA adapter {name!r} is loaded")
            self._leaving.add(name)
            self._lock.wait_for(lambda: self._in_use[name] <= 0)

    # -- what changes the model (the engine thread) -----------------------------------------

    def load(self, name: str, spec: LoraSpec) -> None:
        """Load ``spec`` as ``name`` (unfused; off until a run chooses it).

        Raises:
            LoraError: the name is taken, ``max_loras`` are held, the model takes
                no LoRAs, or this one does not load.
        """
        if self.refusal:
            raise LoraError(self.refusal)
        with self._lock:
            if name in self._entries or any(name == on for on, _ in self.always_on):
                raise LoraError(f"an adapter named {name!r} is already loaded")
            if name in self.reserved:
                raise LoraError(f"the name {name!r} is taken by a served model or another model's adapter")
            if len(self._entries) >= self.max_loras:
                raise LoraError(f"{self.max_loras} adapters are loaded, the most IMGEDIT_MAX_LORAS allows")
        load_lora(self.pipeline, name, spec)
        with self._lock:
            self._entries[name] = Registered(name, spec, int(time.time()))
            self._active = None  # loading may have switched LoRAs on: set them again before the next run
        metrics.loras_loaded.set(len(self._entries))
        log.info("loaded LoRA adapter %s from %s", name, spec.text)

    def unload(self, name: str) -> None:
        """Delete the LoRA ``name`` from the model (after :meth:`retire`)."""
        with self._lock:
            if name not in self._entries:
                raise UnknownLora(f"no LoRA adapter {name!r} is loaded")
        pipeline = takes_loras(self.pipeline)
        pipeline.delete_adapters(name)
        if not any(pipeline.get_list_adapters().values()):
            # peft's wrappers outlive their last LoRA and cost every forward pass a detour:
            # with none left, the model gets its own layers back.
            pipeline.unload_lora_weights()
        with self._lock:
            del self._entries[name]
            self._leaving.discard(name)
            self._active = None
        metrics.loras_loaded.set(len(self._entries))
        log.info("unloaded LoRA adapter %s", name)

    def activate(self, loras: Loras) -> None:
        """Switch on exactly the always-on LoRAs and ``loras``, at their scales (nothing if unchanged)."""
        wanted = self.always_on + loras
        if wanted == self._active or self.refusal:
            return
        started = time.perf_counter()
        pipeline = takes_loras(self.pipeline)
        if wanted:
            pipeline.enable_lora()
            pipeline.set_adapters([name for name, _ in wanted], adapter_weights=[scale for _, scale in wanted])
        elif pipeline.get_list_adapters():  # a model that never had any has nothing to turn off
            pipeline.disable_lora()
        self._active = wanted
        metrics.lora_switch_time.observe(time.perf_counter() - started)


def _refusal(pipeline: Pipeline) -> str | None:
    if not isinstance(pipeline, LoraPipeline):
        return f"{type(pipeline).__name__} takes no LoRA adapters"
    return None
