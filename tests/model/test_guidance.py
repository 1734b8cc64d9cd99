"""Guidance kept to the first steps, and the denoiser's calls counted, on the real tiny pipelines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.acceleration import AccelerationOptions, StepCache, apply_options
from imgedit.model.call import PipelineCall
from imgedit.model.events import denoiser_call
from imgedit.model.families import GuidanceError
from imgedit.model.families.flux2 import Flux2Family, Flux2KleinFamily
from imgedit.model.families.flux_kontext import FluxKontextFamily
from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
from imgedit.model.families.stable_diffusion import InstructPix2PixFamily
from imgedit.model.guidance import guided_steps
from imgedit.model.pipeline import denoiser
from imgedit.model.spec import Levers
from imgedit.model.tiny import build_tiny
from imgedit.scheduling.fusion import fuse, fusion_key
from tests.model.families.conftest import plan

IMAGE = InputImage(rgb=Image.new("RGB", (64, 64), (90, 30, 160)), alpha=None)


@pytest.fixture
def calls():
    """Counts the denoiser calls this process runs, for one test."""
    counted = [0]

    def count() -> None:
        counted[0] += 1

    denoiser_call.observe(count)
    yield counted
    denoiser_call.observe(None)


def qwen_call(pipeline, cfg_until: float, steps: int, **options) -> PipelineCall:
    family = QwenImageEditPlusFamily(pipeline, levers=Levers(cfg_until=cfg_until))
    (call,) = plan(family, [IMAGE], Size(64, 64), [3], num_inference_steps=steps, **options).calls
    return call


def pixels(call: PipelineCall) -> np.ndarray:
    (image,) = call.invoke()
    return np.asarray(image.convert("RGB"), dtype=int)


@pytest.mark.parametrize(("cfg_until", "steps", "expected"), [(1.0, 40, 80), (0.5, 40, 60), (0.25, 4, 5), (0.6, 5, 8)])
def test_guidance_runs_for_the_first_round_fraction_steps_only(tiny_model, calls, cfg_until, steps, expected):
    # True CFG (the default scale 4, with a negative prompt): two denoiser calls per guided step, one per other step.
    assert guided_steps(cfg_until, steps) * 2 + (steps - guided_steps(cfg_until, steps)) == expected
    qwen_call(tiny_model.pipeline, cfg_until, steps).invoke()
    assert calls[0] == expected


def test_at_40_steps_half_the_guidance_saves_a_quarter_of_the_calls(tiny_model, calls):
    qwen_call(tiny_model.pipeline, 1.0, 40).invoke()
    full, calls[0] = calls[0], 0
    qwen_call(tiny_model.pipeline, 0.5, 40).invoke()
    assert calls[0] == full * 3 / 4


def test_unguided_steps_compute_exactly_what_a_run_without_guidance_does(tiny_model):
    # round(0.1 x 4) = 0: no step runs guidance, which must be byte for byte the pipeline's own run without CFG.
    truncated = pixels(qwen_call(tiny_model.pipeline, 0.1, 4))
    unguided = pixels(qwen_call(tiny_model.pipeline, 1.0, 4, true_cfg_scale=1.0))
    guided = pixels(qwen_call(tiny_model.pipeline, 1.0, 4))
    assert np.array_equal(truncated, unguided)
    assert not np.array_equal(truncated, guided)  # guidance does change the picture: the test can fail
    assert np.array_equal(
        pixels(qwen_call(tiny_model.pipeline, 0.5, 4)), pixels(qwen_call(tiny_model.pipeline, 0.5, 4))
    )


@pytest.mark.parametrize(
    ("family_class", "model", "guided", "unguided"),
    [
        (FluxKontextFamily, "tiny:flux-kontext", {"true_cfg_scale": 4.0, "negative_prompt": "blurry"}, {}),
        (Flux2KleinFamily, "tiny:flux2-klein", {"guidance_scale": 4.0}, {"guidance_scale": 1.0}),
    ],
)
def test_the_other_sequential_families_compute_exactly_the_unguided_run_too(family_class, model, guided, unguided):
    pipeline = build_tiny(model).pipeline

    def run(cfg_until: float, **options) -> np.ndarray:
        family = family_class(pipeline, levers=Levers(cfg_until=cfg_until))
        (call,) = plan(family, [IMAGE], Size(64, 64), [3], num_inference_steps=4, **options).calls
        return pixels(call)

    truncated = run(0.1, **guided)
    assert np.array_equal(truncated, run(1.0, **unguided))
    assert not np.array_equal(truncated, run(1.0, **guided))


def test_the_seam_puts_back_whatever_forward_the_denoiser_had(calls):
    # diffusers' hook registry may leave its own forward on the instance; the seam runs through it and restores it.
    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    model = denoiser(pipeline)
    original, seen = model.forward, []

    def hooked(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    model.forward = hooked
    qwen_call(pipeline, 0.5, 4).invoke()
    assert model.__dict__["forward"] is hooked and len(seen) == calls[0] == 6
    del model.forward
    qwen_call(pipeline, 0.5, 2).invoke()
    assert "forward" not in model.__dict__


def test_a_cache_of_blocks_still_sees_every_call_that_runs(calls):
    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    apply_options(pipeline, AccelerationOptions(cache="first_block"), denoiser(pipeline).device)
    qwen_call(pipeline, 0.5, 4).invoke()
    assert calls[0] == 6


def test_without_true_cfg_every_step_is_one_call(tiny_model, calls):
    qwen_call(tiny_model.pipeline, 0.5, 6, true_cfg_scale=1.0).invoke()
    assert calls[0] == 6


def test_the_fraction_travels_with_the_calls_and_separates_fusion():
    family = FluxKontextFamily(build_tiny("tiny:flux-kontext").pipeline, levers=Levers(cfg_until=0.5))
    (half,) = plan(family, [IMAGE], Size(64, 64), [3], num_inference_steps=4).calls
    assert half.cfg_until == 0.5
    whole = dataclasses.replace(half, cfg_until=1.0)
    assert None is not fusion_key(half) != fusion_key(whole) is not None
    assert fuse([half, half]).cfg_until == 0.5
    cached = dataclasses.replace(half, cache=StepCache(kind="taylorseer"))
    assert None is not fusion_key(half) != fusion_key(cached) is not None  # a speed tier's cache fuses apart too


@pytest.mark.parametrize(
    ("family_class", "model", "says"),
    [
        (InstructPix2PixFamily, "tiny:instruct-pix2pix", "runs its guidance in one batched call"),
        (Flux2Family, "tiny:flux2", "has no classifier-free guidance"),
    ],
)
def test_a_family_that_cannot_stop_guidance_part_way_refuses_a_fraction(family_class, model, says):
    pipeline = build_tiny(model).pipeline
    with pytest.raises(GuidanceError, match=says):
        family_class(pipeline, levers=Levers(cfg_until=0.5))
    assert family_class(pipeline).cfg_until == 1.0
