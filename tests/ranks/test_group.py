"""Two gloo ranks on the CPU, rank 0 being this test process: the same pictures as one rank, and every way a run ends.

Each group starts one extra rank (``python -m imgedit.ranks.main``)
with the test hooks (``devtools/test_hooks.py``) installed, so that
faults can be injected into that rank alone. Runs are ordered with step hooks
and prompts the hooks know, never with sleeps.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.server import hooks_path
from imgedit.config import Settings
from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall, RunCancelled
from imgedit.model.events import denoiser_call, encoding_lookup
from imgedit.model.families import Family
from imgedit.model.pipeline import denoiser
from imgedit.ranks import group as ranks_module
from imgedit.ranks.group import RankGroup, RankStartupError, claim_gpus
from imgedit.ranks.lockstep import CallMessage, RankFailure, pack, pipeline_roles, unpack
from imgedit.scheduling.engine import Engine
from imgedit.serving.options import rank_layout
from imgedit.serving.recipe import ModelRecipe, prepare_model
from imgedit.serving.startup import rank_setup, worker_count

HOOKS = hooks_path()
#: The most a pixel of a 2-rank edit may differ from the 1-rank edit, per channel (see docs/parallel.md, "Pictures").
TOLERANCE = 2
OOM, EARLY_OOM, HANG = "rank 1 runs out of memory", "rank 1 runs out of memory early", "rank 1 hangs"
PASS_OOM = "rank 1 runs out of memory in a pass"


def gradient(side: int = 64, flip: bool = False) -> InputImage:
    pixels = (np.arange(side * side * 3).reshape(side, side, 3) * 7 % 251).astype(np.uint8)
    image = Image.fromarray(pixels[:, ::-1] if flip else pixels)
    return InputImage(rgb=image, alpha=None)


def left_half(side: int = 64) -> Image.Image:
    region = Image.new("L", (side, side), 0)
    region.paste(255, (0, 0, side // 2, side))
    return region


def calls(family: Family, prompt: str = "a hat", masked: bool = False, images: int = 2) -> list[PipelineCall]:
    inputs = [gradient(), gradient(flip=True)][: min(images, family.max_images)]
    options = EditOptions(prompt=prompt, seed=7, num_inference_steps=3, negative_prompt="blurry")
    spec = family.resolve(options, inputs, Size(64, 64), left_half() if masked else None)
    return family.plan(spec).calls


@dataclass
class Fatal:
    """What a group reported as fatal (its ``on_fatal``)."""

    messages: list[str] = field(default_factory=list)
    reported: threading.Event = field(default_factory=threading.Event)

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.reported.set()


@dataclass
class Ranks:
    group: RankGroup
    family: Family
    fatal: Fatal


@contextmanager
def two_ranks(model: str, degree: int = 2, **settings: object) -> Iterator[Ranks]:
    """A started group of rank 0 here and the other ``degree - 1`` ranks in child processes, serving ``model``."""
    configured = Settings(model=model, device="cpu", ulysses_degree=degree, attention_backend="native", **settings)
    recipe = ModelRecipe.from_settings(configured)
    fatal = Fatal()
    environment = {
        "PYTHONPATH": HOOKS,
        "TEST_RANK_OOM_PROMPT": OOM,
        "TEST_RANK_EARLY_OOM_PROMPT": EARLY_OOM,
        "TEST_RANK_HANG_PROMPT": HANG,
        "TEST_RANK_PASS_OOM_PROMPT": PASS_OOM,
    }
    setup = rank_setup(configured, recipe, rank_layout(configured))
    group = RankGroup(setup, 0, torch.device("cpu"), on_fatal=fatal, environment=environment)
    try:
        group.start()
        family = prepare_model(recipe, 0, group.loaded).family
        group.attach(family)
        yield Ranks(group, family, fatal)
    finally:
        group.close()


def one_rank(model: str) -> Family:
    # The attention backend is named: diffusers keeps the last one set anywhere in the process as the default.
    return prepare_model(
        ModelRecipe.from_settings(Settings(model=model, device="cpu", attention_backend="native")), 0
    ).family


def largest_difference(first: list[Image.Image], second: list[Image.Image]) -> int:
    assert len(first) == len(second) and first
    return max(
        int(np.abs(np.asarray(a.convert("RGB"), int) - np.asarray(b.convert("RGB"), int)).max())
        for a, b in zip(first, second, strict=True)
    )


def test_each_worker_of_several_ranks_sees_only_its_own_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    claim_gpus(ranks=2, device="auto", worker=2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # all GPUs visible, by their index
    claim_gpus(ranks=4, device="auto", worker=1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b")
    claim_gpus(ranks=1, device="auto", worker=1)  # one rank per edit: every worker sees every GPU, as before
    claim_gpus(ranks=2, device="cpu", worker=1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"


def test_several_ranks_per_edit_make_fewer_workers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert worker_count(Settings(ulysses_degree=2)) == 4
    assert worker_count(Settings(tp_degree=8)) == 1
    assert worker_count(Settings(ring_degree=2, workers=1)) == 1


def test_a_call_crosses_to_another_rank_whole(tiny_model):
    family = one_rank("tiny:qwen-image-edit-plus")
    (call,) = calls(family)
    roles = pipeline_roles(family)
    packed = pack(CallMessage(call, "req-1"), roles)
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        pickle.loads(packed)  # the pipeline is not in the message: only its role is
    message = unpack(packed, roles)
    rebuilt = message.call
    assert message.request_id == "req-1" and rebuilt.pipeline is family.pipeline
    assert rebuilt.kwargs.keys() == call.kwargs.keys()
    assert [image.tobytes() for image in rebuilt.kwargs["image"]] == [image.tobytes() for image in call.kwargs["image"]]
    (generator,), (sent,) = call.kwargs["generator"], rebuilt.kwargs["generator"]
    assert torch.equal(generator.get_state(), sent.get_state())
    with pytest.raises(ValueError, match="no rank can rebuild"):
        pack(
            CallMessage(
                PipelineCall(pipeline=tiny_model.pipeline, kwargs={}, num_images=1, generated_size=Size(64, 64)),
                "req-2",
            ),
            roles,
        )


@pytest.mark.parametrize("model", ["tiny:qwen-image-edit", "tiny:flux-kontext", "tiny:flux2", "tiny:flux2-klein"])
def test_two_ranks_make_the_pictures_of_one(model):
    single = one_rank(model)
    with two_ranks(model) as ranks:
        engine = Engine(runner=ranks.group)  # as the server runs them: on the engine's thread
        for masked in (False, True) if ranks.family.inpaint_pipeline is not None else (False,):
            split = engine.run_now(calls(ranks.family, masked=masked))
            alone = [image for call in calls(single, masked=masked) for image in call.invoke()]
            assert largest_difference(split, alone) <= TOLERANCE
        engine.close()  # closes its runner: the other rank finishes and exits
        assert [rank.process.returncode for rank in ranks.group._ranks] == [0]
    assert ranks.fatal.messages == []


def test_three_ranks_split_a_sequence_that_3_does_not_divide():
    # One 64x64 input makes a sequence of 3k+1 tokens for the tiny Qwen: slices of unequal sizes, which gloo
    # cannot gather by itself (start-up used to fail in warm-up with "invalid tensor size").
    single = one_rank("tiny:qwen-image-edit-plus")
    with two_ranks("tiny:qwen-image-edit-plus", degree=3) as ranks:
        engine = Engine(runner=ranks.group)
        split = engine.run_now(calls(ranks.family, images=1))
        alone = [image for call in calls(single, images=1) for image in call.invoke()]
        assert largest_difference(split, alone) <= TOLERANCE
        engine.close()
        assert [rank.process.returncode for rank in ranks.group._ranks] == [0, 0]
    assert ranks.fatal.messages == []


def forward_passes(family: Family) -> list[int]:
    """The batch of every forward pass this process's denoiser really runs from now on (its first layer's input)."""
    model = denoiser(family.pipeline)
    first = model.transformer_blocks[0] if hasattr(model, "transformer_blocks") else model.conv_in
    batches: list[int] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tensor = next(value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor))
        batches.append(tensor.shape[0])

    first.register_forward_pre_hook(record, with_kwargs=True)
    return batches


@pytest.mark.parametrize(
    ("model", "passes", "alone_passes"),
    [
        # Sequential guidance, 3 steps: rank 0 runs the 3 conditional passes, rank 1 the unconditional ones
        # (Qwen-Image-Edit-Plus: in the four-rank test below).
        ("tiny:flux2-klein", [1, 1, 1], [1] * 6),
        # Batched guidance with three branches (text, image, neither): rank 0 runs two of them, rank 1 one.
        ("tiny:instruct-pix2pix", [2, 2, 2], [3, 3, 3]),
    ],
)
def test_guidance_over_two_ranks_makes_the_pictures_of_one_from_fewer_passes(model, passes, alone_passes):
    single = one_rank(model)
    passes_alone = forward_passes(single)
    alone = [image for call in calls(single) for image in call.invoke()]
    counted: list[int] = []
    denoiser_call.observe(lambda: counted.append(1))
    try:
        with two_ranks(model, degree=1, cfg_parallel=True) as ranks:
            split_passes = forward_passes(ranks.family)
            split = Engine(runner=ranks.group).run_now(calls(ranks.family))
            assert largest_difference(split, alone) <= TOLERANCE
    finally:
        denoiser_call.observe(None)
    assert (split_passes, passes_alone) == (passes, alone_passes)
    assert len(counted) == len(alone_passes)  # every logical call counted once, whichever rank ran it
    assert ranks.fatal.messages == []


def test_guidance_over_two_groups_of_two_ulysses_ranks_runs_stops_fails_and_truncates_in_step():
    model = "tiny:qwen-image-edit-plus"
    single = one_rank(model)
    alone = [image for call in calls(single) for image in call.invoke()]
    truncated_alone = dataclasses.replace(calls(single)[0], cfg_until=0.5).invoke()
    counted: list[int] = []
    with two_ranks(model, degree=2, cfg_parallel=True) as ranks:
        group, family = ranks.group, ranks.family
        passes = forward_passes(family)
        denoiser_call.observe(lambda: counted.append(1))
        try:
            assert largest_difference(group.invoke(calls(family)[0]), alone) <= TOLERANCE
        finally:
            denoiser_call.observe(None)
        # 3 steps, two input images: rank 0 ran the 3 conditional passes (on its half of the sequence), and each
        # of the 6 logical calls was counted once.
        assert (len(passes), len(counted)) == (3, 6)

        def stop_after_step_2(step: int, total: int, latents: torch.Tensor) -> None:
            if step == 1:
                raise RunCancelled

        with pytest.raises(RunCancelled):
            group.invoke(calls(family)[0], stop_after_step_2)
        # Every rank left at the same checkpoint: the next calls run in step, guidance cut short too.
        truncated = group.invoke(dataclasses.replace(calls(family)[0], cfg_until=0.5))
        assert largest_difference(truncated, truncated_alone) <= TOLERANCE
        # The extra ranks fail as their second pass starts, after its checkpoint: rank 1 beside rank 0, ranks 2 and 3
        # about to learn the unconditional arguments. Rank 0 goes on towards the swap; without the checkpoint before
        # it, rank 0 would wait in the swap and the others at their next checkpoint until the rank timeout.
        with pytest.raises(torch.OutOfMemoryError, match="rank 1: OutOfMemoryError: test: out of memory in the second"):
            group.invoke(calls(family, PASS_OOM)[0])
        assert largest_difference(group.invoke(calls(family)[0]), alone) <= TOLERANCE
    assert ranks.fatal.messages == []


class TestOneGroup:
    """Runs ending every way on one group, which a dead rank ends last."""

    @pytest.fixture(scope="class")
    def qwen(self):
        with two_ranks("tiny:qwen-image-edit-plus") as running:
            yield running

    @pytest.fixture(scope="class")
    def reference(self) -> list[Image.Image]:
        family = one_rank("tiny:qwen-image-edit-plus")
        return [image for call in calls(family) for image in call.invoke()]

    def test_rank_0_stops_every_rank_at_the_same_step(self, qwen, reference):
        group, family, fatal = qwen.group, qwen.family, qwen.fatal.messages
        seen: list[int] = []

        def stop_after_step_2(step: int, total: int, latents: torch.Tensor) -> None:
            seen.append(step)
            if step == 1:
                raise RunCancelled

        with pytest.raises(RunCancelled):
            group.invoke(calls(family)[0], stop_after_step_2)
        assert seen == [0, 1]
        # Both ranks left at the same checkpoint: the next call runs in step (else it would time out) and
        # gives the same picture. (The server's log shows rank 1's own line: tests/integration/test_parallel.py.)
        assert largest_difference(group.invoke(calls(family)[0]), reference) <= TOLERANCE
        assert fatal == []

    @pytest.mark.parametrize(("prompt", "steps_seen"), [(OOM, [0]), (EARLY_OOM, [])])
    def test_another_rank_out_of_memory_fails_the_call_and_every_rank_goes_on(
        self, qwen, reference, prompt, steps_seen
    ):
        group, family, fatal = qwen.group, qwen.family, qwen.fatal.messages
        seen: list[int] = []
        with pytest.raises(torch.OutOfMemoryError, match="rank 1: OutOfMemoryError: test: out of memory"):
            group.invoke(calls(family, prompt)[0], lambda step, total, latents: seen.append(step))
        assert seen == steps_seen  # stopped at the first checkpoint after the failure, on rank 0 too
        assert largest_difference(group.invoke(calls(family)[0]), reference) <= TOLERANCE
        assert fatal == []

    def test_guidance_kept_to_the_first_steps_skips_the_same_calls_on_every_rank(self, qwen):
        # 3 steps at 0.5: guidance for round(1.5) = 2 of them. A rank that skipped a call the other ran would wait
        # in a collective (or a checkpoint) until the rank timeout.
        group, family, fatal = qwen.group, qwen.family, qwen.fatal.messages
        truncated = dataclasses.replace(calls(family)[0], cfg_until=0.5)
        alone = dataclasses.replace(calls(one_rank("tiny:qwen-image-edit-plus"))[0], cfg_until=0.5)
        assert largest_difference(group.invoke(truncated), alone.invoke()) <= TOLERANCE
        assert fatal == []

    def test_kept_encodings_are_looked_up_on_every_rank_and_change_nothing(self, qwen):
        # Every rank keeps its own encodings; rank 0 counts its lookups. A rank that computed where another looked
        # up would still give the same tensors, so the pictures must be the same bytes either way.
        group, family = qwen.group, qwen.family
        found: list[bool] = []
        encoding_lookup.observe(found.append)
        try:
            first = group.invoke(calls(family, prompt="kept encodings")[0])
            second = group.invoke(calls(family, prompt="kept encodings")[0])
        finally:
            encoding_lookup.observe(None)
        # The prompt, the negative prompt, two pictures: only the prompt is new (the others ran in earlier tests).
        assert len(found) == 8 and found[0] is False and found[4:] == [True] * 4
        assert [image.tobytes() for image in first] == [image.tobytes() for image in second]

    def test_a_failure_on_every_rank_is_rank_0s_own_error(self, qwen, reference):
        group, family, fatal = qwen.group, qwen.family, qwen.fatal.messages
        call = calls(family)[0]
        broken = PipelineCall(
            pipeline=call.pipeline,
            kwargs={**call.kwargs, "no_such_argument": 1},
            num_images=call.num_images,
            generated_size=call.generated_size,
        )
        with pytest.raises(TypeError, match="no_such_argument"):
            group.invoke(broken)
        assert largest_difference(group.invoke(call), reference) <= TOLERANCE
        assert fatal == []

    def test_a_rank_that_dies_is_fatal_at_once(self, qwen):
        group, family, fatal = qwen.group, qwen.family, qwen.fatal.messages
        (rank,) = group._ranks
        rank.process.kill()
        # Its watcher reports it as soon as the reply pipe closes, without a call to notice it.
        assert qwen.fatal.reported.wait(60)
        assert fatal == ["rank 1 of worker 0 was killed by SIGKILL"]
        with pytest.raises(RankFailure):
            group.invoke(calls(family)[0])


def test_a_rank_that_hangs_is_fatal_after_the_rank_timeout(monkeypatch):
    monkeypatch.setattr(ranks_module, "DEATH_NOTICE_SECONDS", 0.1)
    with two_ranks("tiny:qwen-image-edit-plus", rank_timeout=3) as ranks:
        with pytest.raises(RankFailure, match="out of step"):
            ranks.group.invoke(calls(ranks.family, HANG)[0])
        (message,) = ranks.fatal.messages
        assert message.startswith("the ranks of worker 0 fell out of step (")
        (rank,) = ranks.group._ranks
        assert rank.process.wait(timeout=30) == -9  # killed, not left behind


def test_a_rank_that_cannot_start_says_why():
    configured = Settings(model="tiny:qwen-image-edit-plus", device="cpu", ulysses_degree=2)
    recipe = ModelRecipe.from_settings(configured)
    environment = {"PYTHONPATH": HOOKS, "TEST_RANK_START_FAILURE": "no room for the weights"}
    setup = rank_setup(configured, recipe, rank_layout(configured))
    group = RankGroup(setup, 0, torch.device("cpu"), on_fatal=Fatal(), environment=environment)
    try:
        group.start()
        with pytest.raises(RankStartupError, match=r"^rank 1: start-up failed: RuntimeError: no room for the weights$"):
            prepare_model(recipe, 0, group.loaded)
    finally:
        group.close()
