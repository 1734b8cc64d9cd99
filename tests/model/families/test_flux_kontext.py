from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall
from imgedit.model.families.base import _accepted_only
from imgedit.model.families.flux_kontext import FluxKontextFamily
from imgedit.model.spec import Defaults, EditSpec
from tests.helpers import Refused, status_of
from tests.model.families.conftest import assert_repaints_where_the_mask_is_white, plan, spec

#: An input whose aspect ratio (3:2) differs from most requested sizes, so size bugs show.
IMAGE = InputImage(rgb=Image.new("RGB", (300, 200), (10, 200, 30)), alpha=None)


@pytest.fixture(scope="module")
def tiny():
    from imgedit.model.tiny import build_tiny

    return build_tiny("tiny:flux-kontext")


@pytest.fixture(scope="module")
def tiny_inpaint():
    from imgedit.model.tiny import build_tiny

    return build_tiny("tiny:flux-kontext-inpaint")


@pytest.fixture(scope="module")
def family(tiny):
    return FluxKontextFamily(tiny.pipeline)


def mask_region(size: tuple[int, int] = IMAGE.rgb.size, left_share: float = 0.5) -> Image.Image:
    region = Image.new("L", size, 0)
    region.paste(255, (0, 0, round(size[0] * left_share), size[1]))
    return region


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def run(call: PipelineCall) -> list[Image.Image]:
    return call.invoke()


def test_registry_names_build_the_real_diffusers_classes(tiny, tiny_inpaint):
    from diffusers import FluxKontextInpaintPipeline, FluxKontextPipeline

    assert type(tiny.pipeline) is FluxKontextPipeline
    assert tiny.default_steps == 4
    assert tiny.pipeline.transformer.config.guidance_embeds
    inpaint = tiny_inpaint.pipeline
    assert type(inpaint) is FluxKontextInpaintPipeline
    # Same seeded components: the two builds hold identical weights.
    assert torch.equal(inpaint.transformer.proj_out.weight, tiny.pipeline.transformer.proj_out.weight) and torch.equal(
        inpaint.vae.decoder.conv_out.weight, tiny.pipeline.vae.decoder.conv_out.weight
    )


def test_either_pipeline_of_the_pair_gives_both(family, tiny_inpaint):
    assert type(family.pipeline).__name__ == "FluxKontextPipeline"
    assert type(family.inpaint_pipeline).__name__ == "FluxKontextInpaintPipeline"
    assert family.inpaint_pipeline.transformer is family.pipeline.transformer  # shared, not copied
    assert family.native_mask and family.max_images == 1
    from_inpaint = FluxKontextFamily(tiny_inpaint.pipeline)
    assert type(from_inpaint.pipeline).__name__ == "FluxKontextPipeline"
    assert from_inpaint.inpaint_pipeline is from_inpaint.loaded


def test_size_multiple_is_twice_the_vae_scale_factor(family):
    assert family.pipeline.vae_scale_factor == 8
    assert family.size_multiple == 16


def test_the_tiny_edit_is_deterministic_and_follows_the_prompt(family):
    def edit(prompt: str) -> np.ndarray:
        (call,) = plan(family, [IMAGE], Size(64, 64), [11], prompt=prompt, num_inference_steps=4).calls
        (output,) = run(call)
        assert output.size == (64, 64)
        return pixels(output)

    first = edit("turn it red")
    assert np.array_equal(first, edit("turn it red"))
    assert not np.array_equal(first, edit("turn it blue"))


def test_save_and_load_round_trips_offline(tiny, tmp_path):
    from diffusers import DiffusionPipeline

    tiny.pipeline.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(tiny.pipeline)
    assert loaded.tokenizer.model_max_length == 77
    made = plan(FluxKontextFamily(tiny.pipeline), [IMAGE], Size(64, 64), [3], num_inference_steps=2)
    reloaded = plan(FluxKontextFamily(loaded), [IMAGE], Size(64, 64), [3], num_inference_steps=2)
    assert np.array_equal(pixels(run(made.calls[0])[0]), pixels(run(reloaded.calls[0])[0]))


# -- parameter mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "steps"),
    [
        ({}, 28),
        ({"quality": "high"}, 28),
        ({"quality": "medium"}, 14),
        ({"quality": "low"}, 7),
        ({"quality": "low", "num_inference_steps": 9}, 9),
    ],
)
def test_steps_follow_quality_unless_explicit(family, fields, steps):
    (call,) = plan(family, [IMAGE], Size(64, 64), [1], **fields).calls
    assert call.kwargs["num_inference_steps"] == steps


def test_defaults_size_the_output_by_max_area(family):
    made = plan(family, [IMAGE], Size(96, 64), [7])
    (call,) = made.calls
    assert made.mask_mode == "none" and call.pipeline is family.pipeline
    kwargs = call.kwargs
    assert (kwargs["width"], kwargs["height"], kwargs["max_area"]) == (96, 64, 96 * 64)
    assert kwargs["_auto_resize"] is True  # the reference snaps to a trained Kontext resolution
    assert kwargs["image"] is IMAGE.rgb
    assert (kwargs["guidance_scale"], kwargs["true_cfg_scale"]) == (3.5, 1.0)
    assert kwargs["prompt"] == "turn it red" and kwargs["output_type"] == "pil"
    # No mask: nothing of the inpainting pipeline's, and no negative prompt without true CFG.
    assert not {"negative_prompt", "mask_image", "strength"} & set(kwargs)
    assert call.generated_size == Size(96, 64)


def test_request_guidance_overrides_the_defaults(family):
    (call,) = plan(
        family, [IMAGE], Size(64, 64), [1], guidance_scale=2.5, true_cfg_scale=4.0, negative_prompt="blurry"
    ).calls
    assert (call.kwargs["guidance_scale"], call.kwargs["true_cfg_scale"], call.kwargs["negative_prompt"]) == (
        2.5,
        4.0,
        "blurry",
    )


def test_true_cfg_without_a_negative_prompt_gets_an_empty_one(family):
    (call,) = plan(family, [IMAGE], Size(64, 64), [1], true_cfg_scale=2.0).calls
    assert call.kwargs["negative_prompt"] == ""
    assert (
        len(
            run(
                PipelineCall(
                    pipeline=call.pipeline,
                    kwargs={**call.kwargs, "num_inference_steps": 1},
                    num_images=1,
                    generated_size=Size(64, 64),
                )
            )
        )
        == 1
    )


def test_a_negative_prompt_without_true_cfg_is_dropped(family):
    (call,) = plan(family, [IMAGE], Size(64, 64), [1], negative_prompt="blurry", true_cfg_scale=1.0).calls
    assert "negative_prompt" not in call.kwargs
    (call,) = plan(family, [IMAGE], Size(64, 64), [1], negative_prompt="blurry").calls
    assert "negative_prompt" not in call.kwargs


def test_operator_defaults_replace_the_family_defaults(tiny):
    operated = FluxKontextFamily(tiny.pipeline, overrides=Defaults(steps=12, guidance_scale=2.0, true_cfg_scale=1.5))
    (call,) = plan(operated, [IMAGE], Size(64, 64), [1]).calls
    assert (call.kwargs["num_inference_steps"], call.kwargs["guidance_scale"], call.kwargs["true_cfg_scale"]) == (
        12,
        2.0,
        1.5,
    )
    assert call.kwargs["negative_prompt"] == ""


def test_one_call_per_image_with_its_own_seed(family):
    calls = plan(family, [IMAGE], Size(64, 64), [5, 6, 7]).calls
    assert [call.num_images for call in calls] == [1, 1, 1]
    assert all(call.kwargs["num_images_per_prompt"] == 1 for call in calls)
    noise = [torch.randn(4, generator=call.kwargs["generator"][0]) for call in calls]
    assert torch.equal(noise[1], torch.randn(4, generator=torch.Generator().manual_seed(6)))


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [Size(64, 64), Size(96, 64), Size(64, 128), Size(208, 80), Size(80, 336), Size(320, 240)]
)
@pytest.mark.parametrize("masked", [False, True])
def test_the_generated_size_is_the_requested_size(family, size, masked):
    region = mask_region() if masked else None
    (call,) = plan(family, [IMAGE], size, [2], mask=region, num_inference_steps=1).calls
    (output,) = run(call)
    assert output.size == (size.width, size.height)
    assert call.generated_size == size


# -- inpainting -----------------------------------------------------------------------------


def test_a_mask_is_inpainted_natively_at_the_output_size(family):
    made = plan(family, [IMAGE], Size(96, 64), [3], mask=mask_region(), num_inference_steps=2)
    (call,) = made.calls
    assert made.mask_mode == "native"
    assert call.pipeline is family.inpaint_pipeline
    assert call.kwargs["mask_image"].size == (96, 64)
    # The inpainting pipeline generates at its input's size, so the input comes resized and is kept so.
    assert call.kwargs["image"].size == (96, 64) and call.kwargs["_auto_resize"] is False
    assert call.kwargs["strength"] == 1.0
    assert "image_reference" not in call.kwargs
    (output,) = run(call)
    assert output.size == (96, 64)


def test_the_mask_reaches_the_pipeline(family):
    def inpaint(left_share: float) -> np.ndarray:
        region = mask_region(left_share=left_share)
        (call,) = plan(family, [IMAGE], Size(64, 64), [3], mask=region, num_inference_steps=2).calls
        return pixels(run(call)[0])

    assert not np.array_equal(inpaint(0.5), inpaint(0.25))


def test_request_strength_reaches_the_inpainting_pipeline(family):
    (call,) = plan(family, [IMAGE], Size(64, 64), [3], mask=mask_region(), strength=0.5).calls
    assert call.kwargs["strength"] == 0.5


def _refused_param(family, edit: EditSpec) -> str | None:
    try:
        family.check(edit)
    except Refused as error:
        assert status_of(error) == 400
        return error.param
    return None


def _inpaint_runs(family, edit: EditSpec) -> bool:
    arguments = family.arguments(family.inpaint_pipeline, edit)
    try:
        run(
            PipelineCall(
                pipeline=family.inpaint_pipeline,
                kwargs=_accepted_only(family.inpaint_pipeline, arguments),
                num_images=1,
                generated_size=Size(64, 64),
            )
        )
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("strength", [0.0, 1e-17])
def test_a_strength_leaving_no_step_is_refused_where_the_pipeline_fails(family, strength):
    edit = spec(family, [IMAGE], Size(64, 64), [0], mask=mask_region(), strength=strength, num_inference_steps=4)
    assert _refused_param(family, edit) == "strength"
    assert not _inpaint_runs(family, edit)
    with pytest.raises(Refused):
        family.plan(edit)


def test_low_but_sufficient_strengths_pass_and_run(family):
    edit = spec(family, [IMAGE], Size(64, 64), [0], mask=mask_region(), strength=0.1, num_inference_steps=4)
    assert _refused_param(family, edit) is None
    assert _inpaint_runs(family, edit)
    # Without a mask strength is not used, so it is never refused.
    assert _refused_param(family, spec(family, [IMAGE], Size(64, 64), strength=0.0)) is None


def test_long_prompts_are_truncated_by_the_pipeline_not_refused(family):
    edit = spec(
        family,
        [IMAGE],
        Size(64, 64),
        [1],
        prompt="a long prompt " * 300,
        negative_prompt="n" * 3000,
        true_cfg_scale=2.0,
        num_inference_steps=1,
    )
    assert _refused_param(family, edit) is None
    (call,) = family.plan(edit).calls
    (output,) = run(call)
    assert output.size == (64, 64)


# -- previews and warm-up -------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_previews_decode_like_the_pipeline(family, masked):
    region = mask_region() if masked else None
    (call,) = plan(family, [IMAGE], Size(96, 48), [1], mask=region, num_inference_steps=2).calls
    seen: list[list[Image.Image]] = []
    (output,) = call.invoke(on_step=lambda step, total, latents: seen.append(family.preview(call, latents)))
    assert len(seen) == 2
    assert [image.size for image in seen[0]] == [(96, 48)]
    # After the last step the pipeline decodes the very latents the hook saw: the same picture.
    assert np.array_equal(pixels(seen[-1][0]), pixels(output))
    assert not np.array_equal(pixels(seen[0][0]), pixels(output))


def test_warmup_plans_cover_both_pipelines_and_run(family):
    plans = family.warmup_plans()
    assert [made.mask_mode for made in plans] == ["none", "native"]
    for made in plans:
        (call,) = made.calls
        assert [image.size for image in run(call)] == [(64, 64)]


def test_kontext_repaints_where_the_mask_is_white(family):
    assert_repaints_where_the_mask_is_white(family)


@pytest.mark.parametrize("size", [(64, 15), (12, 12), (300, 12)])
def test_inputs_narrower_than_one_multiple_are_refused_where_the_pipeline_fails(family, size):
    image = InputImage(rgb=Image.new("RGB", size), alpha=None)
    edit = spec(family, [image], Size(64, 64), [0], prompt="p", num_inference_steps=1)
    with pytest.raises(Refused) as caught:
        family.plan(edit)
    assert caught.value.param == "image[0]"
    kwargs = _accepted_only(family.pipeline, family.arguments(family.pipeline, edit))
    with pytest.raises(ZeroDivisionError), torch.inference_mode():
        family.pipeline(**kwargs)
