from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from imgedit.engine import DeadlineExceeded, Engine, Job, RunCancelled
from imgedit.families.base import PipelineCall
from imgedit.sizing import Size

pytestmark = pytest.mark.anyio


class StepPipeline:
    """A pipeline stand-in with diffusers' call shape: it runs ``steps`` steps and records what happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self, step_seconds: float = 0.01) -> StepPipeline:
        self.step_seconds = step_seconds
        self.running = 0
        self.most_at_once = 0
        self.started: list[str] = []
        self.steps_run: dict[str, int] = {}
        return self

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
                if callback_on_step_end is not None:
                    callback_on_step_end(self, step, 0, {"latents": None})
            return SimpleNamespace(images=[Image.new("RGB", (8, 8))])
        finally:
            with self.lock:
                self.running -= 1


PIPELINE = StepPipeline()


def calls(name: str, **kwargs) -> list[PipelineCall]:
    return [PipelineCall(PIPELINE, {"name": name, **kwargs}, 1, Size(8, 8))]


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
    pipeline = PIPELINE.reset(step_seconds=0.1)
    engine = Engine()
    try:
        long_run = asyncio.ensure_future(engine.run(calls("long", steps=5), far()))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await engine.run(calls("late"), time.monotonic() + 0.1)
        await long_run
        assert len(await engine.run(calls("next"), far())) == 1
    finally:
        engine.close()
    assert "late" not in pipeline.started


async def test_a_running_call_stops_at_the_next_step_after_its_deadline():
    pipeline = PIPELINE.reset(step_seconds=0.05)
    engine = Engine()
    try:
        with pytest.raises(DeadlineExceeded):
            await engine.run(calls("slow", steps=200), time.monotonic() + 0.2)
        assert len(await engine.run(calls("after"), far())) == 1
    finally:
        engine.close()
    assert pipeline.steps_run["slow"] < 200
    assert pipeline.started[-1] == "after"


async def test_a_cancelled_waiter_stops_its_run():
    pipeline = PIPELINE.reset(step_seconds=0.05)
    engine = Engine()
    try:
        task = asyncio.ensure_future(engine.run(calls("abandoned", steps=200), far()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(await engine.run(calls("after"), far())) == 1
    finally:
        engine.close()
    assert pipeline.steps_run["abandoned"] < 200


async def test_every_call_runs_on_the_engine_thread_start_up_ones_too():
    threads: list[str] = []

    def pipeline(**_: object) -> SimpleNamespace:
        threads.append(threading.current_thread().name)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8))])

    call = [PipelineCall(pipeline, {}, 1, Size(8, 8))]
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
    from imgedit.families.base import Defaults
    from imgedit.families.qwen_image_edit import QwenImageEditPlusAdapter
    from imgedit.images import InputImage
    from imgedit.request import EditRequest, ImageSource

    adapter = QwenImageEditPlusAdapter(tiny_model.pipeline, defaults=Defaults(steps=2))
    image = InputImage(rgb=Image.new("RGB", (64, 64), (0, 90, 200)), alpha=None)
    plan = adapter.plan(EditRequest(prompt="p", sources=(ImageSource("image[0]"),), n=2), [image], Size(64, 48), [1, 2])
    engine = Engine()
    try:
        images = await engine.run(plan.calls, far())
    finally:
        engine.close()
    assert [output.size for output in images] == [(64, 48), (64, 48)]


def test_evenly_spaced_previews_never_take_the_last_step():
    from imgedit.engine import evenly_spaced

    assert evenly_spaced(40, 3) == {9, 19, 29}
    assert evenly_spaced(4, 3) == {0, 1, 2}
    assert evenly_spaced(2, 3) == {0}
    assert evenly_spaced(1, 2) == set()
    assert evenly_spaced(10, 0) == set()


async def test_a_full_queue_is_refused_with_an_estimated_wait():
    from imgedit.engine import QueueFull

    pipeline = PIPELINE.reset(step_seconds=0.05)
    engine = Engine(max_queue=2)
    try:
        running = engine.submit(calls("running", steps=6))
        await asyncio.sleep(0.05)  # taken off the queue and running
        queued = [engine.submit(calls(f"queued{index}")) for index in range(2)]
        with pytest.raises(QueueFull) as caught:
            engine.submit(calls("refused"))
        assert caught.value.retry_after >= 1
        for job in [running, *queued]:
            assert len(await engine.result(job, far())) == 1
    finally:
        engine.close()
    assert "refused" not in pipeline.started
    assert pipeline.started == ["running", "queued0", "queued1"]


async def test_draining_refuses_new_work_and_stops_runs_after_the_grace():
    from imgedit.engine import Draining, RunCancelled

    pipeline = PIPELINE.reset(step_seconds=0.05)
    engine = Engine()
    try:
        quick = engine.submit(calls("quick", steps=2))
        slow = engine.submit(calls("slow", steps=400))
        await asyncio.sleep(0.01)
        engine.drain(grace=0.5)
        with pytest.raises(Draining):
            engine.submit(calls("late"))
        assert len(await engine.result(quick, far())) == 1
        with pytest.raises(RunCancelled):
            await engine.result(slow, far())
        assert slow.cancel_reason == "shutdown"
    finally:
        engine.close()
    assert pipeline.steps_run["slow"] < 400


async def test_out_of_memory_fails_only_its_request():
    from imgedit.engine import OutOfMemory

    class RunsOutOfMemory(StepPipeline):
        def __call__(self, name, fail=False, **kwargs):
            if fail:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return super().__call__(name, **kwargs)

    pipeline = RunsOutOfMemory()
    engine = Engine()
    try:
        failing = [PipelineCall(pipeline, {"name": "big", "fail": True}, 1, Size(8, 8))]
        with pytest.raises(OutOfMemory):
            await engine.run(failing, far())
        assert len(await engine.run([PipelineCall(pipeline, {"name": "small"}, 1, Size(8, 8))], far())) == 1
    finally:
        engine.close()


async def test_previews_reach_the_sink_at_evenly_spaced_steps():
    PIPELINE.reset()
    engine = Engine()
    received = []
    try:
        job = engine.submit(
            calls("streamed", steps=8),
            previews=3,
            previewer=lambda call, latents: [Image.new("RGB", (4, 4))],
            sink=lambda index, pictures: received.append((index, len(pictures))),
        )
        await engine.result(job, far())
        await asyncio.sleep(0)  # previews are delivered through the loop, before the result
    finally:
        engine.close()
    assert received == [(0, 1), (1, 1), (2, 1)]


async def test_compatible_queued_requests_run_as_one_batch(tiny_model):
    from imgedit.families.stable_diffusion import InstructPix2PixAdapter
    from imgedit.images import InputImage
    from imgedit.request import EditRequest, ImageSource
    from imgedit.tiny import build_tiny

    adapter = InstructPix2PixAdapter(build_tiny("tiny:instruct-pix2pix").pipeline)

    def plan(prompt: str, seed: int):
        request = EditRequest(prompt=prompt, sources=(ImageSource("image[0]"),), num_inference_steps=2)
        image = InputImage(rgb=Image.new("RGB", (64, 64), (seed * 40, 90, 30)), alpha=None)
        (call,) = adapter.plan(request, [image], Size(64, 64), [seed]).calls
        return call

    prompts = [("red", 1), ("blue", 2), ("green", 3), ("grey", 4)]
    alone = [plan(prompt, seed).invoke()[0] for prompt, seed in prompts]
    batches = []
    real_fuse = adapter.fuse

    def counting_fuse(calls_to_fuse):
        batches.append(len(calls_to_fuse))
        return real_fuse(calls_to_fuse)

    engine = Engine(max_batch=3)
    try:
        blocker = engine.submit(calls("blocker", steps=10))  # holds the engine while the others queue up
        jobs = []
        for prompt, seed in prompts:
            call = plan(prompt, seed)
            jobs.append(engine.submit([call], fusion_key=adapter.fusion_key(call), fuser=counting_fuse))
        await engine.result(blocker, far())
        results = [await engine.result(job, far()) for job in jobs]
    finally:
        engine.close()
    assert batches == [3]  # three fused, the fourth ran alone: max_batch
    for (image,), single in zip(results, alone, strict=True):
        assert list(image.getdata()) == list(single.getdata())


async def test_a_cancelled_waiting_request_frees_its_place_at_once():
    from imgedit.engine import QueueFull, RunCancelled

    PIPELINE.reset(step_seconds=0.05)
    engine = Engine(max_queue=1)
    try:
        running = engine.submit(calls("running", steps=10))
        await asyncio.sleep(0.05)
        waiting = engine.submit(calls("waiting"))
        with pytest.raises(QueueFull):
            engine.submit(calls("refused"))
        waiting.cancel("disconnect")
        assert engine.waiting == 0
        admitted = engine.submit(calls("admitted"))
        with pytest.raises(RunCancelled):
            await engine.result(waiting, far())
        assert len(await engine.result(admitted, far())) == 1
        await engine.result(running, far())
    finally:
        engine.close()
    assert "waiting" not in PIPELINE.started


async def test_the_engine_survives_a_failing_fuser():
    PIPELINE.reset(step_seconds=0.02)
    engine = Engine(max_batch=4)

    def broken_fuser(calls_to_fuse):
        raise RuntimeError("cannot fuse")

    try:
        blocker = engine.submit(calls("blocker", steps=10))
        fused = [engine.submit(calls(f"f{index}"), fusion_key="same", fuser=broken_fuser) for index in range(2)]
        await engine.result(blocker, far())
        for job in fused:
            with pytest.raises(RuntimeError, match="cannot fuse"):
                await engine.result(job, far())
        assert len(await engine.run(calls("after"), far())) == 1
    finally:
        engine.close()


async def test_a_request_cancelled_between_its_images_stops_before_the_next():
    PIPELINE.reset(step_seconds=0.05)
    engine = Engine()
    try:
        job = engine.submit(calls("first", steps=4) + calls("second", steps=4))
        while "first" not in PIPELINE.started:
            await asyncio.sleep(0.01)
        job.cancel("disconnect")
        with pytest.raises(RunCancelled):
            await engine.result(job, far())
    finally:
        engine.close()
    assert "second" not in PIPELINE.started


def test_the_first_step_is_not_timed(monkeypatch):
    from imgedit import metrics

    observed = []
    monkeypatch.setattr(metrics.step_time, "observe", observed.append)
    engine = Engine()
    try:
        job = Job(calls("x"), None, None, None, 0.0)  # type: ignore[arg-type]
        hook = engine._step_hook([job], calls("x")[0])
        for step in range(4):
            hook(step, 4, None)
    finally:
        engine.close()
    assert len(observed) == 3
