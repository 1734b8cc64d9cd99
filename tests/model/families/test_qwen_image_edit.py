from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families import UnsupportedPipeline, family_class_for
from imgedit.model.families.base import _accepted_only
from imgedit.model.families.qwen_image_edit import QwenImageEditFamily, QwenImageEditPlusFamily
from imgedit.model.spec import Defaults
from tests.helpers import Refused
from tests.model.families.conftest import assert_repaints_where_the_mask_is_white, plan, spec

IMAGE = InputImage(rgb=Image.new("RGB", (64, 64), (9, 9, 9)), alpha=None)


@pytest.fixture(scope="module")
def family(tiny_model):
    return QwenImageEditPlusFamily(tiny_model.pipeline, overrides=Defaults(steps=40))


def test_the_family_is_chosen_from_the_pipeline_class(tiny_model):
    assert family_class_for(tiny_model.pipeline) is QwenImageEditPlusFamily
    with pytest.raises(UnsupportedPipeline, match="QwenImageEditPlusPipeline"):
        family_class_for(object())
    assert family_class_for(object(), name="qwen-image-edit") is QwenImageEditFamily
    with pytest.raises(UnsupportedPipeline, match="IMGEDIT_FAMILY"):
        family_class_for(tiny_model.pipeline, name="nope")


def test_size_multiple_follows_the_vae(family):
    assert family.size_multiple == family.pipeline.vae_scale_factor * 2


def test_max_images_defaults_to_four_and_may_be_raised_to_sixteen(tiny_model):
    assert QwenImageEditPlusFamily(tiny_model.pipeline).max_images == 4
    assert QwenImageEditPlusFamily(tiny_model.pipeline, max_images=2).max_images == 2
    assert QwenImageEditPlusFamily(tiny_model.pipeline, max_images=16).max_images == 16
    with pytest.raises(ValueError, match="at most 16"):
        QwenImageEditPlusFamily(tiny_model.pipeline, max_images=17)


@pytest.mark.parametrize(
    ("fields", "steps"),
    [
        ({}, 40),
        ({"quality": "high"}, 40),
        ({"quality": "medium"}, 20),
        ({"quality": "low"}, 10),
        ({"quality": "xhigh"}, 60),
        ({"quality": "max"}, 80),
        ({"quality": "low", "num_inference_steps": 7}, 7),
    ],
)
def test_steps_follow_quality_unless_explicit(family, fields, steps):
    assert spec(family, [IMAGE], Size(64, 64), **fields).steps == steps


def test_true_cfg_gets_a_blank_negative_prompt_by_default(family):
    (call,) = plan(family, [IMAGE], Size(64, 48), [7]).calls
    assert call.kwargs["true_cfg_scale"] == 4.0
    assert call.kwargs["negative_prompt"] == " "
    assert (call.kwargs["width"], call.kwargs["height"], call.kwargs["num_inference_steps"]) == (64, 48, 40)
    assert call.kwargs["prompt"] == "turn it red"
    assert "guidance_scale" not in call.kwargs  # not a guidance-distilled transformer


def test_explicit_values_pass_through(family):
    (call,) = plan(
        family, [IMAGE], Size(64, 64), [1], negative_prompt="blurry", true_cfg_scale=2.5, guidance_scale=1.5
    ).calls
    assert (call.kwargs["negative_prompt"], call.kwargs["true_cfg_scale"], call.kwargs["guidance_scale"]) == (
        "blurry",
        2.5,
        1.5,
    )


def test_no_cfg_means_no_negative_prompt(family):
    (call,) = plan(family, [IMAGE], Size(64, 64), [1], true_cfg_scale=1.0).calls
    assert "negative_prompt" not in call.kwargs


def test_one_call_per_image_with_its_own_seed(family):
    calls = plan(family, [IMAGE, IMAGE], Size(64, 64), [5, 6, 7]).calls
    assert [call.num_images for call in calls] == [1, 1, 1]
    first_noise = [torch.randn(4, generator=call.kwargs["generator"][0]) for call in calls]
    assert torch.equal(first_noise[1], torch.randn(4, generator=torch.Generator().manual_seed(6)))
    assert all(len(call.kwargs["image"]) == 2 for call in calls)


def test_arguments_the_pipeline_does_not_take_are_dropped(family, monkeypatch):
    original = QwenImageEditPlusFamily.arguments

    def with_extra(self, *args):
        return {**original(self, *args), "image_guidance_scale": 1.5}

    monkeypatch.setattr(QwenImageEditPlusFamily, "arguments", with_extra)
    (call,) = plan(family, [IMAGE], Size(64, 64), [1]).calls
    assert "image_guidance_scale" not in call.kwargs


def _budget_error(family, images, size, **fields) -> str | None:
    try:
        family.check(spec(family, images, size, **fields))
    except Refused as error:
        return error.param
    return None


def _pipeline_runs(family, images, size, **fields) -> bool:
    edit = spec(family, images, size, num_inference_steps=1, **fields)
    kwargs = _accepted_only(family.pipeline, family.arguments(family.pipeline, edit))
    try:
        with torch.inference_mode():
            family.pipeline(**kwargs)
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


def test_the_prompt_limit_is_exactly_where_the_pipeline_breaks(family):
    size = Size(64, 64)
    low, high = 1, 8000
    while low < high:  # the longest prompt the check accepts
        middle = (low + high + 1) // 2
        if _budget_error(family, [IMAGE], size, prompt="p" * middle) is None:
            low = middle
        else:
            high = middle - 1
    longest, too_long = "p" * low, "p" * (low + 1)
    assert 3000 < low < 4096
    assert _budget_error(family, [IMAGE], size, prompt=too_long) == "prompt"
    assert _pipeline_runs(family, [IMAGE], size, prompt=longest)
    assert not _pipeline_runs(family, [IMAGE], size, prompt=too_long)


def test_a_long_negative_prompt_is_named(family):
    assert _budget_error(family, [IMAGE], Size(64, 64), negative_prompt="n" * 5000) == "negative_prompt"
    assert _budget_error(family, [IMAGE], Size(64, 64), negative_prompt="n" * 5000, true_cfg_scale=1.0) is None


def test_too_elongated_references_are_refused_where_the_pipeline_breaks(family):
    thin = InputImage(rgb=Image.new("RGB", (2000, 40)), alpha=None)
    assert _budget_error(family, [IMAGE, thin], Size(64, 64)) == "image[1]"
    assert not _pipeline_runs(family, [IMAGE, thin], Size(64, 64))
    wide = InputImage(rgb=Image.new("RGB", (400, 40)), alpha=None)
    assert _budget_error(family, [wide], Size(64, 64)) is None


@pytest.fixture(scope="module")
def single():
    from imgedit.model.tiny import build_tiny

    return QwenImageEditFamily(build_tiny("tiny:qwen-image-edit").pipeline, overrides=Defaults(steps=2))


def _mask(size=(64, 64)) -> Image.Image:
    region = Image.new("L", size, 0)
    region.paste(255, (0, 0, size[0] // 2, size[1]))
    return region


def _run(made) -> list[Image.Image]:
    images = []
    for call in made.calls:
        images.extend(call.invoke())
    return images


def test_single_image_pipelines_pair_with_their_inpainting_twin(single):
    from imgedit.model.tiny import build_tiny

    assert type(single.pipeline).__name__ == "QwenImageEditPipeline"
    assert type(single.inpaint_pipeline).__name__ == "QwenImageEditInpaintPipeline"
    assert single.inpaint_pipeline.transformer is single.pipeline.transformer  # shared, not copied
    assert single.max_images == 1
    loaded_inpaint = QwenImageEditFamily(build_tiny("tiny:qwen-image-edit-inpaint").pipeline)
    assert type(loaded_inpaint.pipeline).__name__ == "QwenImageEditPipeline"
    assert loaded_inpaint.native_mask


def test_a_mask_is_inpainted_natively_by_the_single_image_family(single):
    image = InputImage(rgb=Image.new("RGB", (96, 64), (9, 90, 9)), alpha=None)
    made = plan(single, [image], Size(64, 64), [3], mask=_mask((96, 64)))
    (call,) = made.calls
    assert made.mask_mode == "native"
    assert call.pipeline is single.inpaint_pipeline
    assert call.kwargs["mask_image"].size == (64, 64) and call.kwargs["strength"] == 1.0
    (output,) = _run(made)
    assert output.size == (call.generated_size.width, call.generated_size.height)


def test_request_strength_reaches_the_inpainting_pipeline(single):
    image = InputImage(rgb=Image.new("RGB", (64, 64)), alpha=None)
    (call,) = plan(single, [image], Size(64, 64), [3], mask=_mask(), strength=0.5).calls
    assert call.kwargs["strength"] == 0.5


def test_the_plus_family_composites_masks(family):
    made = plan(family, [IMAGE], Size(64, 64), [3], mask=_mask())
    assert made.mask_mode == "composite"
    assert "mask_image" not in made.calls[0].kwargs
    assert made.calls[0].pipeline is family.pipeline


@pytest.mark.parametrize("which", ["plus", "single"])
def test_previews_decode_intermediate_latents(family, single, which):
    chosen = family if which == "plus" else single
    (call,) = plan(chosen, [IMAGE], Size(64, 48), [1], num_inference_steps=2).calls
    seen = []
    call.invoke(on_step=lambda step, total, latents: seen.append(chosen.preview(call, latents)))
    assert len(seen) == 2
    assert [image.size for image in seen[-1]] == [(64, 48)]


@pytest.mark.parametrize("strength", [0.0, 1e-20])
def test_a_stepless_inpainting_strength_is_refused_where_the_pipeline_fails(single, strength):
    image = InputImage(rgb=Image.new("RGB", (64, 64)), alpha=None)
    edit = spec(single, [image], Size(64, 64), [1], mask=_mask(), strength=strength)
    with pytest.raises(Refused) as caught:
        single.plan(edit)
    assert caught.value.param == "strength"
    kwargs = _accepted_only(single.inpaint_pipeline, single.arguments(single.inpaint_pipeline, edit))
    with pytest.raises(ValueError), torch.inference_mode():
        single.inpaint_pipeline(**kwargs)


def test_inpainting_repaints_inside_the_mask_not_outside(single):
    assert_repaints_where_the_mask_is_white(single)


def test_quality_never_asks_for_more_than_200_steps(tiny_model):
    many = QwenImageEditPlusFamily(tiny_model.pipeline, overrides=Defaults(steps=150))
    assert spec(many, [IMAGE], Size(64, 64), quality="max").steps == 200


def test_usage_counts_the_references_as_the_pipeline_sizes_them_and_their_vision_tokens(family):
    large = InputImage(rgb=Image.new("RGB", (2048, 1536)), alpha=None)
    edit = spec(family, [large], Size(64, 64))
    usage = family.tokens(edit)
    reference = family.reference_size(large, edit)  # the VAE sees a fixed area, whatever the upload
    area = sys.modules[type(family.pipeline).__module__].VAE_IMAGE_SIZE  # 1 MP; the tiny model's is smaller
    assert abs(reference.pixels - area) / area < 0.2
    assert usage.image_tokens == family.latent_tokens(reference) + family._vision_tokens(large)
    assert usage.output_tokens == family.latent_tokens(Size(64, 64))
    assert usage.text_tokens > 0


def test_the_native_area_is_a_megapixel_unless_the_loader_says_otherwise(tiny_model):
    assert QwenImageEditPlusFamily(tiny_model.pipeline).native_pixels == 1024 * 1024
    assert QwenImageEditPlusFamily(tiny_model.pipeline, native_pixels=64 * 64).native_pixels == 64 * 64
