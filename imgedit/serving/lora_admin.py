"""What the LoRA endpoints and requests that name an adapter by path do: load and unload on every worker.

``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter`` (vLLM's
endpoints) and a request whose ``lora`` gives a path end here. Names and
paths are checked on the worker that received the call (a clear 400 at once);
the command then goes to every worker (:mod:`imgedit.serving.lora_sync`),
each of which applies it between two runs of its engine. Unloading waits,
on each worker, until the requests already admitted with the adapter have
run; new requests naming it are refused from the moment it was asked for.
"""

from __future__ import annotations

from typing import Any

from imgedit.edit import LORA_NAME
from imgedit.errors import ApiError, invalid
from imgedit.model.lora import LoraError, spec_in_directory
from imgedit.model.lora_registry import LoraRegistry
from imgedit.serving.engine import Engine
from imgedit.serving.lora_sync import OK, Command, LoraSync


class LoraAdmin:
    """Loads and unloads this model's adapters on every worker.

    Args:
        registry: this worker's adapters.
        engine: this worker's engine, which applies every change between runs.
        lora_dir: ``IMGEDIT_LORA_DIR``; paths are only read under it.
        sync: the command log shared with the other workers; None applies commands at once, in this process.
    """

    def __init__(
        self, registry: LoraRegistry, engine: Engine, lora_dir: str | None, sync: LoraSync | None = None
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.lora_dir = lora_dir
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
        """Load the adapter at ``path`` (under ``IMGEDIT_LORA_DIR``) as ``name`` on every worker.

        Raises:
            ApiError: 400 for a bad name, path or scale, a name in use, or no room left; or what loading said.
        """
        if not isinstance(name, str) or not LORA_NAME.fullmatch(name):
            raise invalid("lora_name", "'lora_name' must be letters, digits, '.', '_' and '-'.")
        if not isinstance(path, str) or not path.strip():
            raise invalid("lora_path", "'lora_path' must name a file or directory under IMGEDIT_LORA_DIR.")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise invalid("scale", "'scale' must be a number.")
        if self.registry.has(name):
            raise invalid("lora_name", f"An adapter named {name!r} is already loaded.", code="lora_exists")
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
        """Unload the adapter ``name`` on every worker, once the requests already admitted with it have run.

        Raises:
            ApiError: 404 when no such adapter is loaded.
        """
        if not isinstance(name, str) or not self.registry.has(name):
            raise ApiError(404, f"No LoRA adapter {name!r} is loaded.", param="lora_name", code="lora_not_found")
        command = Command("unload", name)
        return self._answer(command, await self.sync.submit(command), "unloaded")

    def _answer(self, command: Command, outcomes: dict[int, str], done: str) -> dict[str, Any]:
        """The answer once the workers had their say: what each did, or an error when none could."""
        failures = {worker: outcome for worker, outcome in outcomes.items() if outcome != OK}
        missing = [worker for worker in range(self.sync.workers) if worker not in outcomes]
        if failures and len(failures) == len(outcomes) and not missing:
            reason = next(iter(failures.values()))
            raise invalid("lora_path" if command.op == "load" else "lora_name", f"{reason}.", code="lora_failed")
        if failures or missing:
            raise ApiError(
                500 if failures else 504,
                f"The adapter {command.name!r} was {done} on workers {sorted(set(outcomes) - set(failures))}; "
                + (f"it failed on workers {sorted(failures)} ({next(iter(failures.values()))}); " if failures else "")
                + (f"workers {missing} did not confirm within {self.sync.timeout:g} s." if missing else ""),
                code="lora_partly_applied",
            )
        return {"object": "lora_adapter", "lora_name": command.name, "status": done, "workers": len(outcomes)}
