from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from imgedit.engine import DeadlineExceeded, Engine
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
