from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall
from imgedit.model.families.base import _accepted_only
from imgedit.model.families.flux2 import Flux2Family, Flux2KleinFamily, NegativePromptCall
from imgedit.model.spec import Defaults, EditSpec
from tests.helpers import Refused, status_of
from tests.model.families.conftest import assert_repaints_where_the_mask_is_white, plan, spec


def picture(width: int = 64, height: int = 64, seed: int = 0) -> InputImage:
    """A noisy picture, so that which reference the model sees changes its output."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return InputImage(rgb=Image.fromarray(pixels), alpha=None)


def left_half(size: tuple[int, int] = (64, 64)) -> Image.Image:
    region = Image.new("L", size, 0)
    region.paste(255, (0, 0, size[0] // 2, size[1]))
    return region


def run(made) -> list[Image.Image]:
    images = []
    for call in made.calls:
        images.extend(call.invoke())
    return images


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def flux2():
    from imgedit.model.tiny import build_tiny

    return Flux2Family(build_tiny("tiny:flux2").pipeline, overrides=Defaults(steps=4))


@pytest.fixture(scope="module")
def klein():
    from imgedit.model.tiny import build_tiny

    return Flux2KleinFamily(build_tiny("tiny:flux2-klein").pipeline, overrides=Defaults(steps=4))


def distilled_pipeline(base):
    """The tiny Klein components as a step-distilled model (``is_distilled=True``)."""
    from diffusers import Flux2KleinPipeline

    return Flux2KleinPipeline(**base.components, is_distilled=True)


# -- the tiny models ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pipeline_class", "text_encoder_class"),
    [
        ("tiny:flux2", "Flux2Pipeline", "Mistral3ForConditionalGeneration"),
        ("tiny:flux2-klein", "Flux2KleinPipeline", "Qwen3ForCausalLM"),
        ("tiny:flux2-klein-inpaint", "Flux2KleinInpaintPipeline", "Qwen3ForCausalLM"),
    ],
)
def test_registry_names_build_the_real_pipelines(name, pipeline_class, text_encoder_class):
    from imgedit.model.tiny import build_tiny

    tiny = build_tiny(name)
    pipeline = tiny.pipeline
    assert type(pipeline).__name__ == pipeline_class
    assert type(pipeline.text_encoder).__name__ == text_encoder_class
    assert type(pipeline.transformer).__name__ == "Flux2Transformer2DModel"
    assert type(pipeline.vae).__name__ == "AutoencoderKLFlux2"
    assert pipeline.vae_scale_factor == 8  # as the real VAE: sizes are multiples of 16
    assert tiny.default_steps == 4
    # Deep enough for the hidden-state layers the pipeline reads by default.
    import inspect

    layers = inspect.signature(type(pipeline).__call__).parameters["text_encoder_out_layers"].default
    assert pipeline.text_encoder.config.get_text_config().num_hidden_layers >= max(layers)


def test_tiny_builds_are_seeded():
    from imgedit.model.tiny import build_tiny

    first, second = build_tiny("tiny:flux2-klein").pipeline, build_tiny("tiny:flux2-klein").pipeline
    for name in ("transformer", "text_encoder", "vae"):
        for a, b in zip(
            getattr(first, name).state_dict().values(), getattr(second, name).state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)
    assert not torch.allclose(first.vae.bn.running_mean, torch.zeros_like(first.vae.bn.running_mean))


def test_the_klein_chat_template_turns_thinking_off(klein):
    text = klein.pipeline.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_the_flux2_processor_renders_a_mistral_conversation(flux2):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "a cat"}]},
    ]
    text = flux2.pipeline.tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<s>[SYSTEM_PROMPT]be brief[/SYSTEM_PROMPT][INST]a cat[/INST]"


@pytest.mark.parametrize("name", ["tiny:flux2", "tiny:flux2-klein", "tiny:flux2-klein-inpaint"])
def test_a_saved_tiny_pipeline_loads_back_offline(tmp_path, name):
    from diffusers import DiffusionPipeline

    from imgedit.model.tiny import build_tiny

    pipeline = build_tiny(name).pipeline
    pipeline.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipeline) and type(loaded.tokenizer) is type(pipeline.tokenizer)
    arguments = {"prompt": "a cat", "height": 64, "width": 64, "num_inference_steps": 2, "image": picture().rgb}
    if "inpaint" in name:
        arguments["mask_image"] = left_half()
    outputs = [pipe(**arguments, generator=torch.Generator().manual_seed(3)).images[0] for pipe in (pipeline, loaded)]
    assert np.array_equal(pixels(outputs[0]), pixels(outputs[1]))


# -- defaults and parameter mapping ------------------------------------------------------


def test_families_and_pipeline_pairs(flux2, klein):
    assert flux2.name == "flux2" and flux2.pipeline_classes() == ("Flux2Pipeline",)
    assert flux2.inpaint_pipeline is None and not flux2.native_mask
    assert klein.name == "flux2-klein"
    assert type(klein.inpaint_pipeline).__name__ == "Flux2KleinInpaintPipeline"
    assert klein.inpaint_pipeline.transformer is klein.pipeline.transformer  # shared, not copied
    assert flux2.size_multiple == klein.size_multiple == 16


def test_a_loaded_inpainting_pipeline_gets_its_edit_twin():
    from imgedit.model.tiny import build_tiny

    loaded = build_tiny("tiny:flux2-klein-inpaint").pipeline
    family = Flux2KleinFamily(loaded)
    assert type(family.pipeline).__name__ == "Flux2KleinPipeline"
    assert family.inpaint_pipeline is loaded and family.native_mask


def test_max_images(flux2, klein):
    assert Flux2Family(flux2.pipeline).max_images == 6
    assert Flux2KleinFamily(klein.pipeline).max_images == 4
    assert Flux2KleinFamily(klein.pipeline, max_images=16).max_images == 16
    for family in (Flux2Family, Flux2KleinFamily):
        with pytest.raises(ValueError, match="at most 16"):
            family(flux2.pipeline if family is Flux2Family else klein.pipeline, max_images=17)


def test_flux2_defaults_and_what_it_ignores(flux2):
    family = Flux2Family(flux2.pipeline)
    assert family.resolved_defaults.steps == 50
    fields = {"negative_prompt": "blurry", "true_cfg_scale": 3.0, "strength": 0.5, "image_guidance_scale": 2.0}
    (call,) = plan(family, [picture()], Size(64, 48), [7], **fields).calls
    assert call.kwargs["guidance_scale"] == 4.0
    assert (call.kwargs["width"], call.kwargs["height"], call.kwargs["num_inference_steps"]) == (64, 48, 50)
    assert call.kwargs["prompt"] == "turn it red" and call.kwargs["output_type"] == "pil"
    assert not {"negative_prompt", "true_cfg_scale", "strength", "image_guidance_scale"} & call.kwargs.keys()
    assert type(call) is PipelineCall


def test_request_and_operator_guidance_reach_flux2(flux2):
    (call,) = plan(
        Flux2Family(flux2.pipeline, overrides=Defaults(guidance_scale=2.5)), [picture()], Size(64, 64), [1]
    ).calls
    assert call.kwargs["guidance_scale"] == 2.5
    (call,) = plan(flux2, [picture()], Size(64, 64), [1], guidance_scale=6.0, num_inference_steps=3).calls
    assert (call.kwargs["guidance_scale"], call.kwargs["num_inference_steps"]) == (6.0, 3)


def test_klein_base_defaults(klein):
    family = Flux2KleinFamily(klein.pipeline)
    assert not family.distilled
    assert (family.resolved_defaults.steps, family.resolved_defaults.guidance_scale) == (50, 4.0)


def test_distilled_klein_defaults_to_four_steps_without_guidance(klein):
    family = Flux2KleinFamily(distilled_pipeline(klein.pipeline))
    assert family.distilled and family.inpaint_pipeline.config.is_distilled
    assert (family.resolved_defaults.steps, family.resolved_defaults.guidance_scale) == (4, 1.0)
    assert spec(family, [picture()], Size(64, 64), quality="medium").steps == 2
    (call,) = plan(family, [picture()], Size(64, 64), [1], negative_prompt="blurry").calls
    assert type(call) is PipelineCall  # a distilled model runs no CFG: the negative prompt is dropped
    assert call.kwargs["guidance_scale"] == 1.0
    overridden = Flux2KleinFamily(distilled_pipeline(klein.pipeline), overrides=Defaults(steps=8, guidance_scale=2.0))
    assert (overridden.resolved_defaults.steps, overridden.resolved_defaults.guidance_scale) == (8, 2.0)


def test_one_call_per_image_with_its_own_seed(klein):
    made = plan(klein, [picture(seed=i) for i in range(3)], Size(64, 64), [5, 6, 7])
    assert [call.num_images for call in made.calls] == [1, 1, 1]
    noise = [torch.randn(4, generator=call.kwargs["generator"][0]) for call in made.calls]
    assert torch.equal(noise[1], torch.randn(4, generator=torch.Generator().manual_seed(6)))
    assert all(len(call.kwargs["image"]) == 3 for call in made.calls)


# -- running edits -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["flux2", "klein"])
def family(request, flux2, klein):
    return flux2 if request.param == "flux2" else klein


def test_an_edit_is_deterministic_and_follows_prompt_and_seed(family):
    images = [picture(seed=1), picture(96, 64, seed=2)]

    def edit(prompt: str = "turn it red", seed: int = 4) -> np.ndarray:
        (output,) = run(plan(family, images, Size(64, 64), [seed], prompt=prompt))
        assert output.size == (64, 64)
        return pixels(output)

    first = edit()
    assert np.array_equal(first, edit())
    assert not np.array_equal(first, edit(prompt="turn it blue"))
    assert not np.array_equal(first, edit(seed=5))


def test_every_reference_reaches_the_model(family):
    references = [picture(seed=1), picture(80, 64, seed=2), picture(64, 96, seed=3)]
    changed_last = [*references[:2], picture(64, 96, seed=4)]
    outputs = [
        pixels(run(plan(family, images, Size(64, 64), [2]))[0]) for images in (references, changed_last, references[:2])
    ]
    assert not np.array_equal(outputs[0], outputs[1])  # the third reference matters
    assert not np.array_equal(outputs[0], outputs[2])


@pytest.mark.parametrize("size", [Size(64, 64), Size(80, 48), Size(32, 112)])
def test_edits_have_exactly_the_requested_size(family, size):
    images = [picture(96, 64, seed=1), picture(64, 200, seed=2)]
    made = plan(family, images, size, [1])
    (output,) = run(made)
    assert made.calls[0].generated_size == size
    assert output.size == (size.width, size.height)


def test_a_klein_negative_prompt_is_encoded_when_the_call_runs(klein):
    images = [picture(seed=1)]
    (plain,) = plan(klein, images, Size(64, 64), [3]).calls
    (negative,) = plan(klein, images, Size(64, 64), [3], negative_prompt="blurry").calls
    assert type(plain) is PipelineCall
    assert isinstance(negative, NegativePromptCall) and negative.negative_prompt == "blurry"
    assert "negative_prompt_embeds" not in negative.kwargs  # encoded on the engine thread, not while planning
    # An empty negative prompt is what the pipeline encodes itself: same picture, so the embeddings are right.
    (fresh,) = plan(klein, images, Size(64, 64), [3]).calls  # its own, unused generator
    empty = NegativePromptCall(
        pipeline=fresh.pipeline,
        kwargs=fresh.kwargs,
        num_images=1,
        generated_size=fresh.generated_size,
        negative_prompt="",
    )
    baseline = pixels(plain.invoke()[0])
    assert np.array_equal(baseline, pixels(empty.invoke()[0]))
    assert not np.array_equal(baseline, pixels(negative.invoke()[0]))


def test_no_negative_prompt_without_guidance(klein):
    (call,) = plan(klein, [picture()], Size(64, 64), [1], negative_prompt="blurry", guidance_scale=1.0).calls
    assert type(call) is PipelineCall
    assert "negative_prompt" not in call.kwargs and "negative_prompt_embeds" not in call.kwargs


# -- references the pipeline refuses -----------------------------------------------------


def _refused(family, edit: EditSpec) -> str | None:
    try:
        family.check(edit)
    except Refused as error:
        assert status_of(error) == 400
        return error.param
    return None


def _pipeline_accepts(family, images) -> bool:
    edit = spec(family, images, Size(64, 64), num_inference_steps=1)
    kwargs = _accepted_only(family.pipeline, family.arguments(family.pipeline, edit))
    try:
        with torch.inference_mode():
            family.pipeline(**kwargs)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("width", "height", "accepted"),
    [(64, 64, True), (63, 64, False), (64, 40, False), (512, 64, True), (513, 64, False), (64, 600, False)],
)
def test_references_are_refused_exactly_where_the_pipeline_fails(klein, width, height, accepted):
    odd = picture(width, height)
    named = [dataclasses.replace(picture(), param="image[0]"), dataclasses.replace(odd, param="url[0]")]
    edit = klein.resolve(EditOptions(prompt="p"), named, Size(64, 64))
    assert _refused(klein, edit) == (None if accepted else "url[0]")
    assert _pipeline_accepts(klein, [picture(), odd]) == accepted


def test_flux2_refuses_small_references_too(flux2):
    assert _refused(flux2, spec(flux2, [picture(), picture(30, 80)], Size(64, 64))) == "image[1]"


# -- masks ---------------------------------------------------------------------------------


def test_flux2_composites_masks(flux2):
    made = plan(flux2, [picture()], Size(64, 64), [3], mask=left_half())
    assert made.mask_mode == "composite"
    assert made.calls[0].pipeline is flux2.pipeline
    assert "mask_image" not in made.calls[0].kwargs
    (output,) = run(made)
    assert output.size == (64, 64)


def test_klein_inpaints_natively_with_the_extra_images_as_references(klein):
    first = picture(96, 64, seed=1)
    references = [picture(seed=2), picture(80, 64, seed=3)]
    made = plan(klein, [first, *references], Size(64, 48), [3], mask=left_half((96, 64)))
    (call,) = made.calls
    assert made.mask_mode == "native" and call.pipeline is klein.inpaint_pipeline
    assert call.kwargs["mask_image"].size == (64, 48)
    assert call.kwargs["image"].size == (64, 48)  # resized: the inpainting pipeline makes its image's size
    assert call.kwargs["image_reference"] == [image.rgb for image in references]
    assert call.kwargs["strength"] == 1.0
    (output,) = call.invoke()
    assert output.size == (64, 48) == (call.generated_size.width, call.generated_size.height)


def test_the_native_mask_decides_what_is_repainted(klein):
    def final_latents(prompt: str) -> torch.Tensor:
        (call,) = plan(klein, [picture()], Size(64, 64), [3], mask=left_half(), prompt=prompt).calls
        seen: list[torch.Tensor] = []
        call.invoke(on_step=lambda step, total, latents: seen.append(latents.clone()))
        return seen[-1][0].view(4, 4, -1)  # the 4x4 token grid of a 64x64 output, row-major

    red, blue = final_latents("turn it red"), final_latents("turn it blue")
    # Outside the mask (right half) both keep the original image's latents; inside, the prompt shows.
    assert torch.equal(red[:, 2:], blue[:, 2:])
    assert not torch.allclose(red[:, :2], blue[:, :2])


def test_one_image_inpaints_without_references(klein):
    (call,) = plan(klein, [picture()], Size(64, 64), [1], mask=left_half()).calls
    assert "image_reference" not in call.kwargs


def test_request_strength_reaches_the_inpainting_pipeline(klein):
    (call,) = plan(klein, [picture()], Size(64, 64), [3], mask=left_half(), strength=0.5).calls
    assert call.kwargs["strength"] == 0.5
    assert call.invoke()[0].size == (64, 64)


def test_zero_strength_is_refused_only_when_inpainting(klein):
    assert _refused(klein, spec(klein, [picture()], Size(64, 64), mask=left_half(), strength=0.0)) == "strength"
    assert _refused(klein, spec(klein, [picture()], Size(64, 64), strength=0.0)) is None
    (call,) = plan(klein, [picture()], Size(64, 64), [1], mask=left_half()).calls
    with pytest.raises(ValueError):  # what the check saves the caller from
        call.pipeline(**{**call.kwargs, "strength": 0.0, "num_inference_steps": 2})


def test_inpainting_above_one_megapixel_generates_the_predicted_size():
    from imgedit.model.tiny import build_tiny

    family = Flux2KleinFamily(
        build_tiny("tiny:flux2-klein-inpaint").pipeline, overrides=Defaults(steps=1, guidance_scale=1.0)
    )
    size = Size(1040, 1024)  # just over 1 MP: shrunk to 1031x1016, then floored to the multiple
    (call,) = plan(family, [picture(1040, 1024)], size, [0], mask=left_half((1040, 1024))).calls
    assert call.generated_size == Size(1024, 1008)
    edit = spec(family, [picture()], size)
    assert family.generated_size(family.pipeline, edit) == size  # the edit pipeline keeps it
    (output,) = call.invoke()
    assert output.size == (1024, 1008)


# -- previews ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["flux2", "klein", "klein-inpaint"])
def test_previews_decode_intermediate_latents_like_the_pipeline(flux2, klein, case):
    family = flux2 if case == "flux2" else klein
    mask = left_half((96, 64)) if case == "klein-inpaint" else None
    images = [picture(96, 64, seed=1), picture(seed=2)]
    (call,) = plan(family, images, Size(64, 48), [1], mask=mask, num_inference_steps=3).calls
    seen: list[list[Image.Image]] = []
    outputs = call.invoke(on_step=lambda step, total, latents: seen.append(family.preview(call, latents)))
    assert len(seen) == 3
    assert all([image.size for image in previews] == [(64, 48)] for previews in seen)
    # The last step's latents are what the pipeline decodes: the preview is its output, pixel for pixel.
    assert np.array_equal(pixels(seen[-1][0]), pixels(outputs[0]))
    assert not np.array_equal(pixels(seen[0][0]), pixels(outputs[0]))


def test_warm_up_plans_run(flux2, klein):
    for family, modes in ((flux2, ["none"]), (klein, ["none", "native"])):
        plans = family.warmup_plans()
        assert [made.mask_mode for made in plans] == modes
        for made in plans:
            assert [image.size for image in run(made)] == [(64, 64)]


def test_a_tiny_stepless_strength_is_refused_too(klein):
    assert _refused(klein, spec(klein, [picture()], Size(64, 64), mask=left_half(), strength=1e-20)) == "strength"


def test_klein_repaints_where_the_mask_is_white(klein):
    assert_repaints_where_the_mask_is_white(klein)


def test_references_count_at_the_size_the_pipeline_shrinks_them_to(flux2):
    large = picture(2048, 1024)
    edit = spec(flux2, [large, picture()], Size(64, 64))
    assert flux2.reference_size(large, edit) == Size(1440, 720)  # 1 MP, floored to 16
    assert flux2.reference_size(picture(), edit) == Size(64, 64)
    usage = flux2.tokens(edit)
    assert usage.image_tokens == flux2.latent_tokens(Size(1440, 720)) + flux2.latent_tokens(Size(64, 64))
