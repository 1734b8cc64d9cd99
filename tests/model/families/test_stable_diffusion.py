from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families.stable_diffusion import InstructPix2PixFamily, StableDiffusionFamily
from imgedit.model.spec import Defaults
from imgedit.model.tiny import TINY_STEPS, build_tiny
from imgedit.model.tiny.stable_diffusion import build_stable_diffusion_xl
from tests.helpers import Refused, status_of
from tests.model.families.conftest import assert_repaints_where_the_mask_is_white, plan

#: An input whose size differs from every requested size, so that sizing is really exercised.
IMAGE = InputImage(rgb=Image.new("RGB", (80, 120), (200, 40, 40)), alpha=None)


def _image(size: tuple[int, int] = (64, 64)) -> InputImage:
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return InputImage(rgb=Image.fromarray(pixels), alpha=None)


def _mask(size: tuple[int, int] = (64, 64), left: bool = True) -> Image.Image:
    region = Image.new("L", size, 0)
    half = size[0] // 2
    region.paste(255, (0, 0, half, size[1]) if left else (half, 0, size[0], size[1]))
    return region


def _run(made) -> list[Image.Image]:
    images = []
    for call in made.calls:
        images.extend(call.invoke())
    return images


@pytest.fixture(scope="module")
def models():
    built = {name: build_tiny(f"tiny:{name}").pipeline for name in ("instruct-pix2pix", "sdxl-instruct-pix2pix")}
    built |= {name: build_tiny(f"tiny:{name}").pipeline for name in ("stable-diffusion", "stable-diffusion-inpaint")}
    built["sdxl"] = build_stable_diffusion_xl().pipeline
    return built


@pytest.fixture(scope="module")
def families(models):
    steps = Defaults(steps=2)
    return {
        "ip2p": InstructPix2PixFamily(models["instruct-pix2pix"], overrides=steps),
        "sdxl-ip2p": InstructPix2PixFamily(models["sdxl-instruct-pix2pix"], overrides=steps),
        "sd": StableDiffusionFamily(models["stable-diffusion"], overrides=steps),
        "sd-inpaint": StableDiffusionFamily(models["stable-diffusion-inpaint"], overrides=steps),
        "sdxl": StableDiffusionFamily(models["sdxl"], overrides=steps),
    }


# -- the tiny models -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "class_name", "unet_channels"),
    [
        ("instruct-pix2pix", "StableDiffusionInstructPix2PixPipeline", 8),
        ("sdxl-instruct-pix2pix", "StableDiffusionXLInstructPix2PixPipeline", 8),
        ("stable-diffusion", "StableDiffusionPipeline", 4),
        ("stable-diffusion-inpaint", "StableDiffusionInpaintPipeline", 9),
    ],
)
def test_tiny_names_build_the_real_pipeline_classes(models, name, class_name, unet_channels):
    pipeline = models[name]
    assert type(pipeline).__name__ == class_name
    assert pipeline.unet.config.in_channels == unet_channels
    assert pipeline.vae_scale_factor == 8
    assert build_tiny(f"tiny:{name}").default_steps == TINY_STEPS
    assert getattr(pipeline, "safety_checker", None) is None


def test_the_sdxl_models_have_two_text_encoders_and_added_conditioning(models):
    for name in ("sdxl-instruct-pix2pix", "sdxl"):
        pipeline = models[name]
        assert type(pipeline.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
        assert pipeline.unet.config.addition_embed_type == "text_time"


@pytest.mark.parametrize(
    "name", ["instruct-pix2pix", "sdxl-instruct-pix2pix", "stable-diffusion", "stable-diffusion-inpaint"]
)
def test_tiny_models_reload_offline_from_save_pretrained(models, name, tmp_path):
    from diffusers import DiffusionPipeline

    models[name].save_pretrained(tmp_path)
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(reloaded) is type(models[name])
    original = models[name].unet.state_dict()
    assert all(torch.equal(value, original[key]) for key, value in reloaded.unet.state_dict().items())
    assert reloaded.tokenizer("a cat").input_ids == models[name].tokenizer("a cat").input_ids


@pytest.mark.parametrize("kind", ["ip2p", "sd"])
def test_edits_are_deterministic_and_follow_the_prompt(families, kind):
    family = families[kind]

    def edit(prompt: str) -> np.ndarray:
        (image,) = _run(plan(family, [_image()], Size(64, 64), [11], prompt=prompt))
        return np.asarray(image)

    first = edit("make it snow")
    assert np.array_equal(first, edit("make it snow"))
    assert not np.array_equal(first, edit("paint it blue"))


# -- InstructPix2Pix -------------------------------------------------------------------------


def test_instruct_pix2pix_serves_both_classes_and_composites_masks(families):
    assert set(InstructPix2PixFamily.pipeline_classes()) == {
        "StableDiffusionInstructPix2PixPipeline",
        "StableDiffusionXLInstructPix2PixPipeline",
    }
    for kind in ("ip2p", "sdxl-ip2p"):
        family = families[kind]
        assert family.inpaint_pipeline is None and not family.native_mask
        assert family.max_images == 1 and family.size_multiple == 8
        made = plan(family, [_image()], Size(64, 64), [3], mask=_mask())
        (call,) = made.calls
        assert made.mask_mode == "composite"
        assert call.pipeline is family.pipeline
        assert "mask_image" not in call.kwargs


@pytest.mark.parametrize(("kind", "guidance"), [("ip2p", 7.5), ("sdxl-ip2p", 5.0)])
def test_instruct_pix2pix_defaults(families, kind, guidance):
    family = families[kind]
    assert InstructPix2PixFamily.defaults.steps == 50
    (call,) = plan(family, [_image()], Size(64, 64), [3]).calls
    assert call.kwargs["guidance_scale"] == guidance
    assert call.kwargs["image_guidance_scale"] == 1.5
    assert call.kwargs["num_inference_steps"] == 2
    assert "negative_prompt" not in call.kwargs and "strength" not in call.kwargs


def test_instruct_pix2pix_overrides_reach_the_pipeline(families):
    fields = {"guidance_scale": 9.0, "image_guidance_scale": 2.25, "negative_prompt": "blurry", "strength": 0.3}
    (call,) = plan(families["sdxl-ip2p"], [_image()], Size(64, 64), [3], **fields).calls
    assert (call.kwargs["guidance_scale"], call.kwargs["image_guidance_scale"]) == (9.0, 2.25)
    assert call.kwargs["negative_prompt"] == "blurry"
    assert "strength" not in call.kwargs  # InstructPix2Pix has no strength


def test_image_guidance_scale_changes_the_result(families):
    family = families["ip2p"]

    def edit(scale: float) -> np.ndarray:
        (image,) = _run(plan(family, [_image()], Size(64, 64), [5], image_guidance_scale=scale))
        return np.asarray(image)

    assert not np.array_equal(edit(1.5), edit(3.0))


def test_an_operator_guidance_default_applies_to_every_pipeline(models):
    family = InstructPix2PixFamily(models["sdxl-instruct-pix2pix"], overrides=Defaults(guidance_scale=3.0))
    (call,) = plan(family, [_image()], Size(64, 64), [3]).calls
    assert call.kwargs["guidance_scale"] == 3.0
    (call,) = plan(family, [_image()], Size(64, 64), [3], guidance_scale=4.0).calls
    assert call.kwargs["guidance_scale"] == 4.0


def test_sd_instruct_pix2pix_gets_its_size_from_the_resized_input(families):
    (call,) = plan(families["ip2p"], [IMAGE], Size(96, 64), [3]).calls
    assert "height" not in call.kwargs and "width" not in call.kwargs  # the pipeline has no such arguments
    assert call.kwargs["image"].size == (96, 64)
    (call,) = plan(families["sdxl-ip2p"], [IMAGE], Size(96, 64), [3]).calls
    assert (call.kwargs["width"], call.kwargs["height"]) == (96, 64)


# -- plain checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "edit", "inpaint"),
    [
        ("sd", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
        ("sdxl", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    ],
)
def test_text_to_image_checkpoints_become_img2img_and_inpainting(families, models, kind, edit, inpaint):
    family = families[kind]
    loaded = models["stable-diffusion" if kind == "sd" else "sdxl"]
    assert type(loaded).__name__ in StableDiffusionFamily.pipeline_classes()
    assert type(family.pipeline).__name__ == edit
    assert type(family.inpaint_pipeline).__name__ == inpaint
    assert family.pipeline.unet is loaded.unet and family.inpaint_pipeline.vae is loaded.vae  # shared
    assert family.native_mask


def test_a_loaded_img2img_pipeline_pairs_with_its_inpainting_twin(families):
    img2img = families["sd"].pipeline
    family = StableDiffusionFamily(img2img)
    assert family.pipeline is img2img
    assert type(family.inpaint_pipeline).__name__ == "StableDiffusionInpaintPipeline"


def test_strength_defaults_and_overrides(families):
    family = families["sd"]
    (call,) = plan(family, [_image()], Size(64, 64), [3]).calls
    assert call.kwargs["strength"] == 0.8 and call.pipeline is family.pipeline
    (call,) = plan(family, [_image()], Size(64, 64), [3], mask=_mask()).calls
    assert call.kwargs["strength"] == 1.0
    for mask in (None, _mask()):
        (call,) = plan(family, [_image()], Size(64, 64), [3], mask=mask, strength=0.5).calls
        assert call.kwargs["strength"] == 0.5


@pytest.mark.parametrize(("kind", "guidance"), [("sd", 7.5), ("sdxl", 5.0)])
def test_plain_checkpoint_guidance_defaults(families, kind, guidance):
    family = families[kind]
    assert StableDiffusionFamily.defaults.steps == 50
    for mask in (None, _mask()):
        (call,) = plan(family, [_image()], Size(64, 64), [3], mask=mask, negative_prompt="dull").calls
        assert call.kwargs["guidance_scale"] == guidance
        assert call.kwargs["negative_prompt"] == "dull"
        assert "image_guidance_scale" not in call.kwargs


def test_a_mask_is_inpainted_natively(families):
    family = families["sd"]
    image = _image((96, 64))
    made = plan(family, [image], Size(96, 64), [3], mask=_mask((96, 64)))
    (call,) = made.calls
    assert made.mask_mode == "native"
    assert call.pipeline is family.inpaint_pipeline
    assert call.kwargs["mask_image"].size == (96, 64)
    (left,) = call.invoke()
    assert left.size == (96, 64)
    (right,) = _run(plan(family, [image], Size(96, 64), [3], mask=_mask((96, 64), left=False)))
    assert not np.array_equal(np.asarray(left), np.asarray(right))  # the mask really steers the pipeline


def test_an_inpainting_checkpoint_runs_unmasked_edits_with_a_full_mask(families, models):
    family = families["sd-inpaint"]
    loaded = models["stable-diffusion-inpaint"]
    assert family.pipeline is loaded and family.inpaint_pipeline is loaded
    made = plan(family, [IMAGE], Size(96, 64), [3])
    (call,) = made.calls
    assert made.mask_mode == "none"
    full = call.kwargs["mask_image"]
    assert full.size == (96, 64) and full.getextrema() == (255, 255)
    assert call.kwargs["strength"] == 0.8
    (output,) = call.invoke()
    assert output.size == (96, 64)
    masked = plan(family, [IMAGE], Size(96, 64), [3], mask=_mask(IMAGE.rgb.size))
    assert masked.mask_mode == "native"
    assert masked.calls[0].kwargs["mask_image"].getextrema() == (0, 255)


def test_the_9_channel_unet_cannot_run_as_img2img(models):
    from diffusers import AutoPipelineForImage2Image

    img2img = AutoPipelineForImage2Image.from_pipe(models["stable-diffusion-inpaint"])
    img2img.set_progress_bar_config(disable=True)
    with pytest.raises(RuntimeError), torch.inference_mode():
        img2img(prompt="x", image=_image().rgb, num_inference_steps=2)


def test_short_schedules_are_lengthened_to_run_one_step(families):
    family = families["sd"]
    (call,) = plan(family, [_image()], Size(64, 64), [3], num_inference_steps=1).calls
    assert call.kwargs["num_inference_steps"] == 2  # 1 x 0.8 would run no step
    (call,) = plan(family, [_image()], Size(64, 64), [3], strength=0.01).calls
    assert call.kwargs["num_inference_steps"] == 100
    seen = []
    call.invoke(on_step=lambda step, total, latents: seen.append(step))
    assert 1 <= len(seen) <= 2  # PNDM runs its first timestep twice


@pytest.mark.parametrize("strength", [0.0, 0.0005])
def test_a_strength_that_runs_no_step_is_refused(families, strength):
    with pytest.raises(Refused) as raised:
        plan(families["sd"], [_image()], Size(64, 64), [3], strength=strength)
    assert status_of(raised.value) == 400 and raised.value.param == "strength"


@pytest.mark.parametrize("kind", ["ip2p", "sdxl-ip2p", "sd", "sd-inpaint", "sdxl"])
def test_warm_up_plans_run(families, kind):
    for made in families[kind].warmup_plans():
        for output in _run(made):
            assert output.size == (made.size.width, made.size.height)


# -- sizes, seeds and previews ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ip2p", "sdxl-ip2p", "sd", "sd-inpaint", "sdxl"])
@pytest.mark.parametrize("size", [Size(64, 64), Size(96, 64)])
def test_outputs_come_out_at_the_requested_size(families, kind, size):
    family = families[kind]
    for mask in (None, _mask(IMAGE.rgb.size)):
        made = plan(family, [IMAGE], size, [3], mask=mask)
        assert all(call.generated_size == size for call in made.calls)
        assert [image.size for image in _run(made)] == [(size.width, size.height)]


def test_one_call_per_image_with_its_own_seed(families):
    calls = plan(families["sd"], [_image()], Size(64, 64), [5, 6]).calls
    assert [call.num_images for call in calls] == [1, 1]
    noise = torch.randn(4, generator=calls[1].kwargs["generator"][0])
    assert torch.equal(noise, torch.randn(4, generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize(
    ("kind", "masked"),
    [("ip2p", False), ("sdxl-ip2p", False), ("sd", False), ("sd", True), ("sd-inpaint", False), ("sdxl", True)],
)
def test_previews_decode_the_step_latents_like_the_pipeline(families, kind, masked):
    family = families[kind]
    mask = _mask((96, 64)) if masked else None
    (call,) = plan(family, [_image((96, 64))], Size(96, 64), [1], mask=mask, num_inference_steps=3, strength=1.0).calls
    seen = []
    (output,) = call.invoke(on_step=lambda step, total, latents: seen.append(family.preview(call, latents)))
    assert len(seen) == len(call.pipeline.scheduler.timesteps) >= 3  # PNDM runs its first timestep twice
    assert all([image.size for image in previews] == [(96, 64)] for previews in seen)
    # The last step's latents are the final ones: the preview is the output itself.
    difference = np.abs(np.asarray(seen[-1][0], dtype=int) - np.asarray(output, dtype=int))
    assert difference.max() <= 1


def test_sdxl_instruct_pix2pix_previews_come_through_the_legacy_callback(families):
    family = families["sdxl-ip2p"]
    parameters = inspect.signature(type(family.pipeline).__call__).parameters
    assert "callback_on_step_end" not in parameters and "callback" in parameters
    (call,) = plan(family, [_image()], Size(64, 48), [1], num_inference_steps=2).calls
    seen = []
    call.invoke(on_step=lambda step, total, latents: seen.append((step, family.preview(call, latents))))
    assert [step for step, _ in seen] == [0, 1]
    assert [image.size for image in seen[-1][1]] == [(64, 48)]


def test_sdxl_previews_undo_the_latent_normalisation():
    pipeline = build_stable_diffusion_xl().pipeline
    pipeline.vae.register_to_config(latents_mean=[0.5, -0.5, 0.25, 0.0], latents_std=[2.0, 0.5, 1.0, 1.5])
    family = StableDiffusionFamily(pipeline, overrides=Defaults(steps=2))
    (call,) = plan(family, [_image()], Size(64, 64), [1], strength=1.0).calls
    seen = []
    (output,) = call.invoke(on_step=lambda step, total, latents: seen.append(family.preview(call, latents)))
    difference = np.abs(np.asarray(seen[-1][0], dtype=int) - np.asarray(output, dtype=int))
    assert difference.max() <= 1


def test_plain_checkpoints_repaint_where_the_mask_is_white(families):
    assert_repaints_where_the_mask_is_white(families["sd"])


def test_input_fidelity_moves_the_strength_and_an_explicit_strength_wins(families):
    family = families["sd"]
    strengths = {
        level: plan(family, [_image()], Size(64, 64), [3], input_fidelity=level).calls[0].kwargs["strength"]
        for level in ("high", "low")
    }
    assert strengths == {"high": 0.5, "low": 0.9}
    (call,) = plan(family, [_image()], Size(64, 64), [3], input_fidelity="high", strength=0.7).calls
    assert call.kwargs["strength"] == 0.7
    (call,) = plan(family, [_image()], Size(64, 64), [3], mask=_mask(), input_fidelity="high").calls
    assert call.kwargs["strength"] == 1.0  # the masked area is still repainted fully


def test_input_fidelity_moves_instruct_pix2pix_image_guidance(families):
    family = families["ip2p"]
    scales = {
        level: plan(family, [_image()], Size(64, 64), [3], input_fidelity=level).calls[0].kwargs["image_guidance_scale"]
        for level in ("high", "low")
    }
    assert scales == {"high": 2.0, "low": 1.2}


def test_the_native_area_is_the_checkpoints_default_resolution(families, models):
    for name, key in (("sd", "stable-diffusion"), ("sdxl", "sdxl"), ("ip2p", "instruct-pix2pix")):
        pipeline = models[key]
        side = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        assert families[name].native_pixels == side * side
