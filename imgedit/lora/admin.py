"""What the LoRA endpoints and requests that name a LoRA by path do: load and unload on every worker.

``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter`` (vLLM's
endpoints) and a request whose ``lora`` gives a path end here. Names and
paths are checked on the worker that received the call (a clear refusal at
once); the command then goes to every worker (:mod:`imgedit.lora.sync`), each
of which applies it between two runs of its engine. Unloading waits, on each
worker, until the requests already admitted with the LoRA have run; new
requests naming it are refused from the moment it was asked for.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from imgedit.edit import LORA_NAME
from imgedit.errors import NotFound, invalid
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import LoraError, spec_in_directory
from imgedit.lora.sync import OK, Command, LoraSync

T = TypeVar("T")


class BetweenRuns(Protocol):
    """Runs a task on the engine thread between two runs (the engine's :meth:`between_runs`)."""

    def between_runs(self, task: Callable[[], T]) -> concurrent.futures.Future[T]: ...


class PartlyApplied(Exception):
    """Some workers applied a command and others did not, or did not say so in time.

    Attributes:
        timed_out: workers stayed silent (rather than refusing it).
    """

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class LoraAdmin:
    """Loads and unloads this model's LoRAs on every worker.

    Args:
        registry: this worker's LoRAs.
        engine: this worker's engine, which applies every change between runs.
        lora_dir: ``IMGEDIT_LORA_DIR``; paths are only read under it.
        sync: the command log shared with the other workers; None applies commands at once, in this process.
        no_paths: why this model loads no LoRA from a path (None: it does, from ``lora_dir``).
    """

    def __init__(
        self,
        registry: LoraRegistry,
        engine: BetweenRuns,
        lora_dir: str | None,
        sync: LoraSync | None = None,
        no_paths: str | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.lora_dir = lora_dir
        self.no_paths = no_paths
        self.sync = sync if sync is not None else LoraSync(self.apply)

    def apply(self, command: Command) -> None:
        """Apply ``command`` to this worker's model (blocks until done).

        Raises:
            LoraError: it cannot be applied (the answer says why).
        """
        if command.op == "load":
            spec = spec_in_directory(self.lora_dir, command.path, command.scale)
            self.engine.between_runs(lambda: self.registry.load(command.name, spec)).result()
        else:
            self.registry.retire(command.name)
            self.engine.between_runs(lambda: self.registry.unload(command.name)).result()

    async def load(self, name: Any, path: Any, scale: Any = 1.0) -> dict[str, Any]:
        """Load the LoRA at ``path`` (under ``IMGEDIT_LORA_DIR``) as ``name`` on every worker.

        Raises:
            RequestError: a bad name, path or scale, a name in use, no room left; or what loading said.
            PartlyApplied: not every worker loaded it.
        """
        if not isinstance(name, str) or not LORA_NAME.fullmatch(name):
            raise invalid("lora_name", "'lora_name' must be letters, digits, '.', '_' and '-'.")
        if not isinstance(path, str) or not path.strip():
            raise invalid("lora_path", "'lora_path' must name a file or directory under IMGEDIT_LORA_DIR.")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise invalid("scale", "'scale' must be a number.")
        if self.no_paths is not None:
            raise invalid("lora_path", f"{self.no_paths}.")
        await self.sync.caught_up()  # so that what this worker holds is what every worker will hold
        if self.registry.has(name):
            raise invalid("lora_name", f"An adapter named {name!r} is already loaded.", code="lora_exists")
        if name in self.registry.reserved:
            raise invalid(
                "lora_name", f"The name {name!r} is taken by a served model or another model's adapter.", "lora_exists"
            )
        if self.registry.refusal:
            raise invalid("lora_name", f"This model takes no LoRA adapters: {self.registry.refusal}.")
        if len(self.registry.names()) >= self.registry.max_loras:
            raise invalid(
                "lora_name",
                f"{self.registry.max_loras} adapters are loaded, the most IMGEDIT_MAX_LORAS allows; unload one first.",
                code="too_many_adapters",
            )
        try:
            spec_in_directory(self.lora_dir, path, float(scale))  # refuse a bad path here, before any worker
        except LoraError as error:
            raise invalid("lora_path", f"{error}.") from None
        command = Command("load", name, path=path.strip(), scale=float(scale))
        return self._answer(command, await self.sync.submit(command), "loaded")

    async def unload(self, name: Any) -> dict[str, Any]:
        """Unload the LoRA ``name`` on every worker, once the requests already admitted with it have run.

        Raises:
            NotFound: no such LoRA is loaded.
            PartlyApplied: not every worker unloaded it.
        """
        await self.sync.caught_up()
        if not isinstance(name, str) or not self.registry.has(name):
            raise NotFound(f"No LoRA adapter {name!r} is loaded.", param="lora_name", code="lora_not_found")
        command = Command("unload", name)
        return self._answer(command, await self.sync.submit(command), "unloaded")

    def _answer(self, command: Command, outcomes: dict[int, str], done: str) -> dict[str, Any]:
        """The answer once the workers had their say: what each did, or an error when not all did it."""
        failures = {worker: outcome for worker, outcome in outcomes.items() if outcome != OK}
        missing = [worker for worker in range(self.sync.workers) if worker not in outcomes]
        if failures and len(failures) == len(outcomes) and not missing:
            reason = next(iter(failures.values()))
            raise invalid("lora_path" if command.op == "load" else "lora_name", f"{reason}.", code="lora_failed")
        if failures or missing:
            raise PartlyApplied(
                f"The adapter {command.name!r} was {done} on workers {sorted(set(outcomes) - set(failures))}; "
                + (f"it failed on workers {sorted(failures)} ({next(iter(failures.values()))}); " if failures else "")
                + (f"workers {missing} did not confirm within {self.sync.timeout:g} s." if missing else ""),
                timed_out=not failures,
            )
        return {"object": "lora_adapter", "lora_name": command.name, "status": done, "workers": len(outcomes)}
