from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall, RunCancelled
from imgedit.scheduling.engine import Engine
from imgedit.scheduling.jobs import DeadlineExceeded, Job, QueueFull

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Hold:
    """Where a run waits: ``reached`` is set when it gets there, and it goes on once ``release`` is set."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def arrival(self) -> None:
        """Wait, without blocking the event loop, until the run is held."""
        assert await asyncio.to_thread(self.reached.wait, 60), "the run never got to its hold"


class StepPipeline:
    """A pipeline stand-in with diffusers' call shape: it runs ``steps`` steps and records what happened.

    Tests order what happens with holds (:meth:`hold`), never with sleeps: a
    held run is known to be running, and stays so until the test releases it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self, step_seconds: float = 0.01) -> StepPipeline:
        self.step_seconds = step_seconds
        self.running = 0
        self.most_at_once = 0
        self.started: list[str] = []
        self.steps_run: dict[str, int] = {}
        self.holds: dict[tuple[str, int], Hold] = {}
        return self

    def hold(self, name: str, at_step: int = 0) -> Hold:
        """Make the call named ``name`` wait after its step ``at_step`` (from 0), before the step callback."""
        hold = self.holds[(name, at_step)] = Hold()
        return hold

    def __call__(self, name: str, steps: int = 3, fail: bool = False, callback_on_step_end=None):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.append(name)
        self._num_timesteps = steps  # what diffusers pipelines expose during a call
        try:
            if fail:
                raise RuntimeError("boom")
            for step in range(steps):
                time.sleep(self.step_seconds)
                self.steps_run[name] = step + 1
                hold = self.holds.get((name, step))
                if hold is not None:
                    hold.reached.set()
                    assert hold.release.wait(timeout=60), "the test never released its hold"
                if callback_on_step_end is not None:
                    callback_on_step_end(self, step, 0, {"latents": None})
            return SimpleNamespace(images=[Image.new("RGB", (8, 8))])
        finally:
            with self.lock:
                self.running -= 1


PIPELINE = StepPipeline()
#: The most a fused image may differ from its single run, per pixel and channel.
FUSED_TOLERANCE = 1


class GatePipeline:
    """A pipeline stand-in whose call waits until ``release`` is set: it holds the engine while a test queues work."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, **kwargs) -> SimpleNamespace:
        self.started.set()
        if not self.release.wait(timeout=60):
            raise RuntimeError("the gate was never released")
        return SimpleNamespace(images=[Image.new("RGB", (8, 8))])

    def calls(self) -> list[PipelineCall]:
        return [PipelineCall(pipeline=self, kwargs={}, num_images=1, generated_size=Size(8, 8))]


def calls(name: str, **kwargs) -> list[PipelineCall]:
    return [PipelineCall(pipeline=PIPELINE, kwargs={"name": name, **kwargs}, num_images=1, generated_size=Size(8, 8))]


def far() -> float:
    return time.monotonic() + 60


async def test_calls_run_one_at_a_time_in_arrival_order():
    pipeline = PIPELINE.reset()
    engine = Engine()
    try:
        names = [f"job{index}" for index in range(6)]
        results = await asyncio.gather(*(engine.run(calls(name), far()) for name in names))
    finally:
        engine.close()
    assert pipeline.most_at_once == 1
    assert pipeline.started == names
    assert all(len(images) == 1 for images in results)


async def test_all_calls_of_a_request_run_back_to_back():
    pipeline = PIPELINE.reset()
    engine = Engine()
    try:
        first = calls("a1") + calls("a2") + calls("a3")
        images, _ = await asyncio.gather(engine.run(first, far()), engine.run(calls("b"), far()))
    finally:
        engine.close()
    assert len(images) == 3
    assert pipeline.started == ["a1", "a2", "a3", "b"]


async def test_a_failure_fails_only_its_request():
    engine = Engine()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await engine.run(calls("bad", fail=True), far())
        assert len(await engine.run(calls("good"), far())) == 1
    finally:
        engine.close()


async def test_a_queued_call_past_its_deadline_never_runs():
    pipeline = PIPELINE.reset()
    hold = pipeline.hold("long")
    engine = Engine()
    try:
        long_run = asyncio.ensure_future(engine.run(calls("long", steps=5), far()))
        await hold.arrival()
        with pytest.raises(DeadlineExceeded):
            await engine.run(calls("late"), time.monotonic() + 0.1)
        hold.release.set()
        await long_run
        assert len(await engine.run(calls("next"), far())) == 1
    finally:
        engine.close()
    assert "late" not in pipeline.started


async def test_a_running_call_stops_at_the_next_step_after_its_deadline():
    pipeline = PIPELINE.reset()
    hold = pipeline.hold("slow")
    engine = Engine()
    try:
        job = engine.submit(calls("slow", steps=200))
        await hold.arrival()
        with pytest.raises(DeadlineExceeded):
            await engine.result(job, time.monotonic() + 0.05)
        hold.release.set()
        assert len(await engine.run(calls("after"), far())) == 1
    finally:
        engine.close()
    assert pipeline.steps_run["slow"] < 200
    assert pipeline.started[-1] == "after"


async def test_a_cancelled_waiter_stops_its_run():
    pipeline = PIPELINE.reset()
    hold = pipeline.hold("abandoned")
    engine = Engine()
    try:
        task = asyncio.ensure_future(engine.run(calls("abandoned", steps=200), far()))
        await hold.arrival()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hold.release.set()
        assert len(await engine.run(calls("after"), far())) == 1
    finally:
        engine.close()
    assert pipeline.steps_run["abandoned"] < 200


async def test_every_call_runs_on_the_engine_thread_start_up_ones_too():
    threads: list[str] = []

    def pipeline(**_: object) -> SimpleNamespace:
        threads.append(threading.current_thread().name)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8))])

    call = [PipelineCall(pipeline=pipeline, kwargs={}, num_images=1, generated_size=Size(8, 8))]
    engine = Engine()
    try:
        assert len(engine.run_now(call)) == 1  # from a thread with no event loop, as at start-up
        assert len(await engine.run(call, far())) == 1
    finally:
        engine.close()
    assert threads == ["imgedit-engine", "imgedit-engine"]


def test_a_failed_start_up_run_raises_in_the_caller_and_the_engine_goes_on():
    engine = Engine()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            engine.run_now(calls("warm-up", fail=True))
        assert len(engine.run_now(calls("again"))) == 1
    finally:
        engine.close()


def test_a_closed_engine_refuses_start_up_runs_instead_of_hanging():
    engine = Engine()
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.run_now(calls("late"))


async def test_runs_the_real_tiny_pipeline(tiny_model):
    from imgedit.edit import EditOptions
    from imgedit.media.images import InputImage
    from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
    from imgedit.model.spec import Defaults

    family = QwenImageEditPlusFamily(tiny_model.pipeline, overrides=Defaults(steps=2))
    image = InputImage(rgb=Image.new("RGB", (64, 64), (0, 90, 200)), alpha=None)
    plan = family.plan(family.resolve(EditOptions(prompt="p", n=2, seed=1), [image], Size(64, 48)))
    engine = Engine()
    try:
        images = await engine.run(plan.calls, far())
    finally:
        engine.close()
    assert [output.size for output in images] == [(64, 48), (64, 48)]


def test_evenly_spaced_previews_never_take_the_last_step():
    from imgedit.scheduling.steps import evenly_spaced

    assert evenly_spaced(40, 3) == {9, 19, 29}
    assert evenly_spaced(4, 3) == {0, 1, 2}
    assert evenly_spaced(2, 3) == {0}
    assert evenly_spaced(1, 2) == set()
    assert evenly_spaced(10, 0) == set()


async def test_a_full_queue_is_refused_with_an_estimated_wait():
    pipeline = PIPELINE.reset()
    hold = pipeline.hold("running")
    engine = Engine(max_queue=2)
    try:
        running = engine.submit(calls("running", steps=6))
        await hold.arrival()  # taken off the queue and running
        queued = [engine.submit(calls(f"queued{index}")) for index in range(2)]
        with pytest.raises(QueueFull) as caught:
            engine.submit(calls("refused"))
        assert caught.value.retry_after >= 1
        hold.release.set()
        for job in [running, *queued]:
            assert len(await engine.result(job, far())) == 1
    finally:
        engine.close()
    assert "refused" not in pipeline.started
    assert pipeline.started == ["running", "queued0", "queued1"]


async def test_draining_refuses_new_work_and_stops_runs_after_the_grace(monkeypatch):
    from imgedit.scheduling.jobs import Draining

    timers = []

    class GraceTimer:
        """Stands in for the grace period's timer: it fires when the test says, not after a time."""

        def __init__(self, interval, function, args=()):
            self.interval, self.function, self.args, self.daemon = interval, function, args, False
            timers.append(self)

        def start(self):
            pass

    monkeypatch.setattr(threading, "Timer", GraceTimer)
    pipeline = PIPELINE.reset()
    hold = pipeline.hold("slow")
    engine = Engine()
    try:
        quick = engine.submit(calls("quick", steps=2))
        slow = engine.submit(calls("slow", steps=400))
        engine.drain(grace=0.5)
        with pytest.raises(Draining):
            engine.submit(calls("late"))
        assert len(await engine.result(quick, far())) == 1
        await hold.arrival()
        (grace,) = timers
        assert grace.interval == 0.5
        grace.function(*grace.args)  # the grace period is over
        hold.release.set()
        with pytest.raises(RunCancelled):
            await engine.result(slow, far())
        assert slow.cancel_reason == "shutdown"
    finally:
        engine.close()
    assert pipeline.steps_run["slow"] < 400


async def test_out_of_memory_fails_only_its_request():
    from imgedit.scheduling.jobs import OutOfMemory

    class RunsOutOfMemory(StepPipeline):
        def __call__(self, name, fail=False, **kwargs):
            if fail:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return super().__call__(name, **kwargs)

    pipeline = RunsOutOfMemory()
    engine = Engine()
    try:
        failing = [
            PipelineCall(
                pipeline=pipeline, kwargs={"name": "big", "fail": True}, num_images=1, generated_size=Size(8, 8)
            )
        ]
        with pytest.raises(OutOfMemory):
            await engine.run(failing, far())
        assert (
            len(
                await engine.run(
                    [
                        PipelineCall(
                            pipeline=pipeline, kwargs={"name": "small"}, num_images=1, generated_size=Size(8, 8)
                        )
                    ],
                    far(),
                )
            )
            == 1
        )
    finally:
        engine.close()


async def test_previews_reach_the_sink_at_evenly_spaced_steps():
    PIPELINE.reset()
    engine = Engine(previewer=lambda call, latents: [Image.new("RGB", (4, 4))])
    received = []
    try:
        job = engine.submit(
            calls("streamed", steps=8),
            previews=3,
            sink=lambda index, pictures: received.append((index, len(pictures))),
        )
        await engine.result(job, far())
        await asyncio.sleep(0)  # previews are delivered through the loop, before the result
    finally:
        engine.close()
    assert received == [(0, 1), (1, 1), (2, 1)]


async def test_compatible_queued_requests_run_as_one_batch(tiny_model, monkeypatch):
    from imgedit.edit import EditOptions
    from imgedit.media.images import InputImage
    from imgedit.model.families.stable_diffusion import InstructPix2PixFamily
    from imgedit.model.tiny import build_tiny
    from imgedit.scheduling import engine as engine_module

    family = InstructPix2PixFamily(build_tiny("tiny:instruct-pix2pix").pipeline)

    def plan(prompt: str, seed: int):
        image = InputImage(rgb=Image.new("RGB", (64, 64), (seed * 40, 90, 30)), alpha=None)
        options = EditOptions(prompt=prompt, num_inference_steps=2, seed=seed)
        (call,) = family.plan(family.resolve(options, [image], Size(64, 64))).calls
        return call

    prompts = [("red", 1), ("blue", 2), ("green", 3), ("grey", 4)]
    alone = [plan(prompt, seed).invoke()[0] for prompt, seed in prompts]
    queued = [plan(prompt, seed) for prompt, seed in prompts]
    batches = []
    real_fuse = engine_module.fuse

    def counting_fuse(calls_to_fuse):
        batches.append(len(calls_to_fuse))
        return real_fuse(calls_to_fuse)

    monkeypatch.setattr(engine_module, "fuse", counting_fuse)
    gate = GatePipeline()
    engine = Engine(max_batch=3, fusable=family.fusable)
    try:
        blocker = engine.submit(gate.calls())  # holds the engine while the others queue up
        jobs = [engine.submit([call]) for call in queued]
        gate.release.set()
        await engine.result(blocker, far())
        results = [await engine.result(job, far()) for job in jobs]
    finally:
        engine.close()
    assert batches == [3]  # three fused, the fourth ran alone: max_batch
    batched = real_fuse([plan(prompt, seed) for prompt, seed in prompts[:3]]).invoke()  # fresh generators
    for (image,), expected in zip(results, [*batched, alone[3]], strict=True):
        assert list(image.getdata()) == list(expected.getdata())  # each request got its own image, in order
    for (image,), single in zip(results, alone, strict=True):
        # Batched arithmetic adds in another order: at most one level apart (docs/operations.md, scheduling).
        difference = np.abs(np.asarray(image, dtype=int) - np.asarray(single, dtype=int))
        assert difference.max() <= FUSED_TOLERANCE


async def test_a_cancelled_waiting_request_frees_its_place_at_once():
    hold = PIPELINE.reset().hold("running")
    engine = Engine(max_queue=1)
    try:
        running = engine.submit(calls("running", steps=10))
        await hold.arrival()
        waiting = engine.submit(calls("waiting"))
        with pytest.raises(QueueFull):
            engine.submit(calls("refused"))
        waiting.cancel("disconnect")
        assert engine.waiting == 0
        admitted = engine.submit(calls("admitted"))
        with pytest.raises(RunCancelled):
            await engine.result(waiting, far())
        hold.release.set()
        assert len(await engine.result(admitted, far())) == 1
        await engine.result(running, far())
    finally:
        engine.close()
    assert "waiting" not in PIPELINE.started


async def test_the_engine_survives_a_failing_fuser(monkeypatch):
    from imgedit.scheduling import engine as engine_module

    def broken_fuser(calls_to_fuse):
        raise RuntimeError("cannot fuse")

    monkeypatch.setattr(engine_module, "fuse", broken_fuser)
    PIPELINE.reset()
    gate = GatePipeline()
    engine = Engine(max_batch=4, fusable=True)
    try:
        blocker = engine.submit(gate.calls())
        fused = [engine.submit(calls("same")) for _ in range(2)]
        gate.release.set()
        await engine.result(blocker, far())
        for job in fused:
            with pytest.raises(RuntimeError, match="cannot fuse"):
                await engine.result(job, far())
        assert len(await engine.run(calls("after"), far())) == 1
    finally:
        engine.close()


async def test_a_request_cancelled_between_its_images_stops_before_the_next():
    hold = PIPELINE.reset().hold("first", at_step=3)  # its last step
    engine = Engine()
    try:
        job = engine.submit(calls("first", steps=4) + calls("second", steps=4))
        await hold.arrival()
        job.cancel("disconnect")
        hold.release.set()
        with pytest.raises(RunCancelled):
            await engine.result(job, far())
    finally:
        engine.close()
    assert "second" not in PIPELINE.started


def test_the_first_step_is_not_timed(monkeypatch):
    from imgedit import metrics
    from imgedit.scheduling.steps import step_hook

    observed = []
    monkeypatch.setattr(metrics.step_time, "observe", observed.append)
    job = Job(calls=calls("x"), future=None, loop=None, context=None, admitted=0.0)  # type: ignore[arg-type]
    hook = step_hook([job], calls("x")[0], None, 30.0)
    for step in range(4):
        hook(step, 4, None)
    assert len(observed) == 3


async def test_a_client_answered_at_once_is_admitted_even_with_no_queue(monkeypatch):
    """With max_queue=0, the next edit sent the moment an answer arrives finds the engine idle.

    The engine thread is held right after it hands out the answer (until the next edit
    was submitted), so an engine that marked itself idle only afterwards would refuse it.
    """
    submitted = threading.Event()
    settle = Job.settle

    def settle_then_hold(job, images=None, error=None):
        settle(job, images, error)
        submitted.wait(timeout=10)

    monkeypatch.setattr(Job, "settle", settle_then_hold)
    PIPELINE.reset()
    engine = Engine(max_queue=0)
    try:
        assert len(await engine.run(calls("first"), far())) == 1
        second = engine.submit(calls("second"))  # QueueFull here if the engine still looked busy
        submitted.set()
        assert len(await engine.result(second, far())) == 1
    finally:
        submitted.set()
        engine.close()


async def test_the_request_about_to_start_frees_its_queue_place_at_once(monkeypatch):
    """With max_queue=1, a request sent the moment an answer arrives takes the place of the one that starts next.

    The engine thread is held right after it hands out the first answer, before it takes
    the waiting request: that one starts next, so the queue has room again.
    """
    submitted = threading.Event()
    settle = Job.settle
    settled = []

    def settle_then_hold(job, images=None, error=None):
        settle(job, images, error)
        settled.append(job)
        if len(settled) == 1:
            submitted.wait(timeout=10)

    monkeypatch.setattr(Job, "settle", settle_then_hold)
    PIPELINE.reset()
    hold = PIPELINE.hold("first")
    engine = Engine(max_queue=1)
    try:
        first = engine.submit(calls("first"))
        await hold.arrival()
        second = engine.submit(calls("second"))
        with pytest.raises(QueueFull):  # one running, one waiting: full
            engine.submit(calls("refused"))
        hold.release.set()
        assert len(await engine.result(first, far())) == 1
        third = engine.submit(calls("third"))  # QueueFull here if "second" still held its place
        submitted.set()
        for job in (second, third):
            assert len(await engine.result(job, far())) == 1
        assert PIPELINE.started == ["first", "second", "third"]
    finally:
        submitted.set()
        hold.release.set()
        engine.close()


async def test_only_calls_with_the_same_loras_fuse_and_each_run_gets_its_loras(monkeypatch):
    from imgedit.scheduling import engine as engine_module

    batches, prepared = [], []
    real_fuse = engine_module.fuse

    def counting_fuse(calls_to_fuse):
        batches.append(len(calls_to_fuse))
        return real_fuse(calls_to_fuse)

    def batchable(prompt, callback_on_step_end=None) -> SimpleNamespace:
        """A pipeline stand-in that makes one image per prompt, as batched diffusers calls do."""
        return SimpleNamespace(images=[Image.new("RGB", (8, 8))] * (len(prompt) if isinstance(prompt, list) else 1))

    monkeypatch.setattr(engine_module, "fuse", counting_fuse)
    gate = GatePipeline()
    engine = Engine(max_batch=4, fusable=True, prepare=prepared.append)
    ink = (("ink", 1.0),)
    try:
        blocker = engine.submit(gate.calls())
        call = PipelineCall(pipeline=batchable, kwargs={"prompt": "p"}, num_images=1, generated_size=Size(8, 8))
        jobs = [engine.submit([call], loras=loras) for loras in (ink, (), ink, ())]
        gate.release.set()
        await engine.result(blocker, far())
        for job in jobs:
            await engine.result(job, far())
    finally:
        engine.close()
    assert batches == [2, 2]  # the two with ink together, the two without together
    assert prepared == [(), ink, ()]  # the blocker, then one run per choice of LoRAs, in arrival order


async def test_a_runner_runs_every_call_and_is_closed_with_the_engine():
    class Runner:
        def __init__(self) -> None:
            self.invoked: list[str] = []
            self.closed = False

        def invoke(self, call, on_step=None):
            self.invoked.append(call.kwargs["name"])
            return call.invoke(on_step)

        def close(self) -> None:
            self.closed = True

    runner = Runner()
    engine = Engine(runner=runner)
    try:
        engine.run_now(calls("warm-up"))
        await engine.run(calls("edit"), far())
    finally:
        engine.close()
    assert runner.invoked == ["warm-up", "edit"] and runner.closed


async def test_jobs_of_several_models_run_with_their_own_hooks_and_never_fuse_together(monkeypatch):
    """One engine, two models (``IMGEDIT_MODELS``): each job switches its own model's LoRAs and previews with its
    own previewer; equal requests fuse only with requests for the same model."""
    from imgedit.scheduling import engine as engine_module
    from imgedit.scheduling.jobs import ModelTurn

    batches: list[int] = []
    real_fuse = engine_module.fuse

    def counting_fuse(calls_to_fuse):
        batches.append(len(calls_to_fuse))
        return real_fuse(calls_to_fuse)

    def model() -> object:
        def batchable(prompt, callback_on_step_end=None) -> SimpleNamespace:
            count = len(prompt) if isinstance(prompt, list) else 1
            return SimpleNamespace(images=[Image.new("RGB", (8, 8))] * count)

        return batchable

    monkeypatch.setattr(engine_module, "fuse", counting_fuse)
    prepared: list[tuple[str, object]] = []
    turns = {
        name: ModelTurn(prepare=lambda loras, name=name: prepared.append((name, loras)), fusable=True)
        for name in ("first", "second")
    }
    pipelines = {name: model() for name in turns}
    gate = GatePipeline()
    engine = Engine(max_batch=4, fusable=True)
    try:
        blocker = engine.submit(gate.calls())
        jobs = []
        for name in ("first", "second", "first", "second"):
            call = PipelineCall(
                pipeline=pipelines[name], kwargs={"prompt": "p"}, num_images=1, generated_size=Size(8, 8)
            )
            jobs.append(engine.submit([call], turn=turns[name]))
        gate.release.set()
        await engine.result(blocker, far())
        for job in jobs:
            assert len(await engine.result(job, far())) == 1
    finally:
        engine.close()
    assert batches == [2, 2]  # the two for each model together, never across models
    assert prepared == [("first", ()), ("second", ())]


async def test_jobs_for_the_model_on_the_device_go_first_but_overtake_a_job_at_most_the_bound():
    """Several models: queued jobs whose model is on the device run before one that needs a swap, until that one
    has been overtaken OVERTAKE_BOUND times; then it runs, and its model is on the device."""
    from imgedit.scheduling.jobs import ModelTurn
    from imgedit.scheduling.order import OVERTAKE_BOUND

    on_device = {"b"}

    def turn(name: str) -> ModelTurn:
        def bring(_loras: object) -> None:
            on_device.clear()
            on_device.add(name)

        return ModelTurn(name=name, prepare=bring, ready=lambda: name in on_device)

    gate = GatePipeline()
    engine = Engine(max_queue=16)
    try:
        blocker = engine.submit(gate.calls())
        names = ["a0", *(f"b{n}" for n in range(OVERTAKE_BOUND + 2))]
        jobs = [engine.submit(calls(name), turn=turn(name[0])) for name in names]
        PIPELINE.reset()
        gate.release.set()
        await engine.result(blocker, far())
        for each in jobs:
            await engine.result(each, far())
    finally:
        engine.close()
    expected = [
        *(f"b{n}" for n in range(OVERTAKE_BOUND)),
        "a0",
        *(f"b{n}" for n in range(OVERTAKE_BOUND, OVERTAKE_BOUND + 2)),
    ]
    assert PIPELINE.started == expected
