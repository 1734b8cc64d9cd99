"""Commands that every worker applies before an answer says so, through a shared log."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from imgedit.lora.sources import LoraError
from imgedit.lora.sync import OK, Command, LoraSync, ShuttingDown

pytestmark = pytest.mark.anyio


class Worker:
    """A worker's model, as far as the log is concerned: the names it holds."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.applied = threading.Event()

    def apply(self, command: Command) -> None:
        if command.op == "load":
            if command.path == "broken":
                raise LoraError("cannot load 'broken': not a LoRA file")
            self.names.append(command.name)
        else:
            self.names.remove(command.name)
        self.applied.set()


def workers(directory, count: int, timeout: float = 60) -> tuple[list[Worker], list[LoraSync]]:
    models = [Worker() for _ in range(count)]
    syncs = [LoraSync(model.apply, index, count, directory, timeout) for index, model in enumerate(models)]
    return models, syncs


async def test_a_command_is_answered_once_every_worker_applied_it(tmp_path):
    models, syncs = workers(tmp_path, 2)
    for sync in syncs:
        sync.start()
    try:
        assert await syncs[0].submit(Command("load", "ink", "ink.safetensors")) == {0: OK, 1: OK}
        assert [model.names for model in models] == [["ink"], ["ink"]]
        assert await syncs[1].submit(Command("unload", "ink")) == {0: OK, 1: OK}
        assert [model.names for model in models] == [[], []]
    finally:
        for sync in syncs:
            sync.close()


async def test_each_worker_says_why_it_could_not(tmp_path):
    _, syncs = workers(tmp_path, 2)
    for sync in syncs:
        sync.start()
    try:
        outcomes = await syncs[0].submit(Command("load", "bad", "broken"))
        assert outcomes == {0: "cannot load 'broken': not a LoRA file", 1: "cannot load 'broken': not a LoRA file"}
    finally:
        for sync in syncs:
            sync.close()


def test_an_acknowledgement_appears_whole(tmp_path, monkeypatch):
    # Another worker polls the acknowledgements: one it can see must already hold the whole outcome.
    sync = LoraSync(Worker().apply, 0, 2, tmp_path)
    sync.start()
    sync.close()
    final = tmp_path / "acks" / "0.0"
    written = []
    write_text = Path.write_text

    def watching_write(path, *args, **kwargs):
        written.append(path)  # a file being written is empty for a moment: it must not be the one readers poll
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", watching_write)
    sync._acknowledge(0, "cannot load 'broken': not a LoRA file")
    assert written and final not in written
    assert sync._acknowledged(0) == {0: "cannot load 'broken': not a LoRA file"}


async def test_a_worker_that_does_not_answer_is_missing_from_the_outcome(tmp_path):
    models, syncs = workers(tmp_path, 2, timeout=0.5)
    syncs[0].start()  # worker 1 never starts following
    try:
        outcomes = await syncs[0].submit(Command("load", "ink", "ink.safetensors"))
        assert 1 not in outcomes and outcomes.get(0, OK) == OK
        while 0 not in syncs[0]._acknowledged(0):  # worker 0 confirms in its own time
            await anyio.sleep(0.01)
    finally:
        syncs[0].close()
    # Started later, it replays the log: it holds what the others hold.
    syncs[1].start()
    try:
        assert syncs[1]._acknowledged(0) == {0: OK, 1: OK}
        assert models[1].names == ["ink"]
    finally:
        syncs[1].close()


async def test_a_worker_that_starts_later_replays_every_command_in_order(tmp_path):
    _, syncs = workers(tmp_path, 1)
    syncs[0].start()
    try:
        for command in (Command("load", "a", "a"), Command("load", "b", "b"), Command("unload", "a")):
            assert await syncs[0].submit(command) == {0: OK}
    finally:
        syncs[0].close()
    late = Worker()
    LoraSync(late.apply, 0, 1, tmp_path).start()
    assert late.names == ["b"]


async def test_without_a_directory_commands_apply_at_once():
    model = Worker()
    sync = LoraSync(model.apply)
    sync.start()
    assert await sync.submit(Command("load", "ink", "ink.safetensors")) == {0: OK}
    assert model.names == ["ink"]


async def test_a_worker_answers_for_its_loras_only_once_it_has_caught_up_with_the_log(tmp_path):
    # A command whose worker was killed before answering is in the log, and another worker may not have
    # applied it yet (it applies commands between runs): its load and unload checks must wait for it.
    model, gate = Worker(), threading.Event()

    def apply_when_let(command: Command) -> None:
        gate.wait(timeout=60)
        model.apply(command)

    sync = LoraSync(apply_when_let, 0, 1, tmp_path)
    sync.start()
    try:
        sync._append(Command("load", "ink", "ink.safetensors"))  # as a killed worker left it: never answered

        async def let_it_apply() -> None:
            gate.set()

        async with anyio.create_task_group() as group:
            group.start_soon(let_it_apply)
            await sync.caught_up()
            assert model.names == ["ink"]
    finally:
        gate.set()
        sync.close()


async def test_a_worker_shutting_down_stops_waiting_for_the_others_and_takes_no_new_command(tmp_path):
    # Worker 1 never acknowledges, as a worker that has stopped: without stop_waiting, submit waits the whole timeout.
    _, syncs = workers(tmp_path, 2)
    syncs[0].start()
    try:
        async with anyio.create_task_group() as tasks:

            async def stop_once_in_the_log() -> None:
                while not (tmp_path / "commands.jsonl").read_text():
                    await anyio.sleep(0.01)
                syncs[0].stop_waiting()

            tasks.start_soon(stop_once_in_the_log)
            with pytest.raises(ShuttingDown):
                await syncs[0].submit(Command("load", "ink", "ink.safetensors"))
        with pytest.raises(ShuttingDown):
            await syncs[0].submit(Command("load", "light", "light.safetensors"))
        with pytest.raises(ShuttingDown):
            await syncs[0].caught_up()
        assert len((tmp_path / "commands.jsonl").read_text().splitlines()) == 1  # the refused one never went in
    finally:
        syncs[0].close()


async def test_a_worker_shutting_down_stops_waiting_to_catch_up(tmp_path):
    gate = threading.Event()
    sync = LoraSync(lambda command: gate.wait(timeout=60), 0, 1, tmp_path)
    sync.start()
    try:
        sync._append(Command("load", "ink", "ink.safetensors"))  # applied only once the gate opens
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(anyio.to_thread.run_sync, sync.stop_waiting)
            with pytest.raises(ShuttingDown):
                await sync.caught_up()
    finally:
        gate.set()
        sync.close()
