"""FLUX.2: FLUX.2-dev (``Flux2PipelineLike``) and FLUX.2-klein (``Flux2KleinPipeline`` with its inpainting twin).

Family quirks handled here:

* Every pipeline takes several references, concatenated into the
  transformer's sequence with no limit in the code. Black Forest Labs
  recommend at most 6 for FLUX.2-dev and 4 for FLUX.2-klein, the defaults
  here; operators may allow up to 16.
* Each reference must be at least 64 px per side with an aspect ratio of at
  most 8 (``Flux2ImageProcessor.check_image_input``), or the edit pipelines
  raise; such a request is refused with a 400 naming the image. References
  over 1 MP are shrunk to 1 MP by the pipeline and floored to a multiple of 16.
* Sizes are multiples of twice the VAE scale factor (16 for the real VAE); the
  edit pipelines make exactly the requested size. The Klein inpainting
  pipeline ignores ``height``/``width`` and makes the size of its ``image``
  (shrunk to 1 MP, floored to the multiple), so the first image is resized to
  the requested size first: the output then has the requested size, up to 1 MP.
* FLUX.2-dev embeds ``guidance_scale`` (4 by default) in the transformer and
  has no negative prompt and no true CFG: ``negative_prompt`` and
  ``true_cfg_scale`` are ignored.
* FLUX.2-klein never embeds guidance. The base models run real
  classifier-free guidance when ``guidance_scale > 1`` (4 by default, 50 steps)
  against an empty negative prompt; a request's ``negative_prompt`` replaces
  it, encoded into ``negative_prompt_embeds`` on the engine thread just before
  the call (the pipeline takes no negative prompt text). The step-distilled
  models (``is_distilled`` in ``model_index.json``: klein 4B and 9B) ignore
  ``guidance_scale`` and the negative prompt and default to 4 steps with
  guidance 1, as their model cards recommend.
* Masks: FLUX.2-dev has no inpainting pipeline, so masks are composited. Klein
  inpaints natively with ``Flux2KleinInpaintPipeline``: the first image is
  repainted under the mask (white repaints), ``strength`` 1 by default, and any
  further images become its ``image_reference`` (all resized and cropped to
  the first reference's size, which the pipeline requires). A ``strength`` that
  leaves no denoising step is refused.
* Previews: unpack the token sequence by its position ids, undo the VAE's
  batch-norm latent normalisation, unpatchify the 2x2 patches, decode.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from imgedit.edit import HARD_MAX_IMAGES
from imgedit.errors import invalid
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.branches import GuidanceKind
from imgedit.model.call import EditPlan, PipelineCall, StepHook, generators, postprocess
from imgedit.model.families.base import Family, require_a_denoising_step
from imgedit.model.pipeline import Pipeline
from imgedit.model.spec import Defaults, EditSpec

#: ``Flux2ImageProcessor.check_image_input``'s limits on every reference.
MIN_REFERENCE_SIDE = 64
MAX_REFERENCE_ASPECT = 8
#: The pixel area the pipelines shrink their images to when larger (references, and Klein's inpainting input).
MAX_IMAGE_AREA = 1024 * 1024
#: Defaults of the step-distilled Klein models (model cards: 4 steps, guidance 1).
DISTILLED_STEPS = 4
DISTILLED_GUIDANCE_SCALE = 1.0


def _within_one_megapixel(size: Size, multiple: int) -> Size:
    """``size`` as the pipelines resize images: shrunk to :data:`MAX_IMAGE_AREA` if larger, floored to ``multiple``."""
    width, height = size.width, size.height
    if width * height > MAX_IMAGE_AREA:
        scale = math.sqrt(MAX_IMAGE_AREA / (width * height))
        width, height = int(width * scale), int(height * scale)
    return Size(width // multiple * multiple, height // multiple * multiple)


class Flux2PipelineLike(Pipeline, Protocol):
    """What this family reads of its pipelines, beyond what every pipeline has."""

    vae: Any
    vae_scale_factor: int
    config: Any
    _execution_device: torch.device

    def _prepare_latent_ids(self, latents: torch.Tensor) -> torch.Tensor: ...

    def _unpack_latents_with_ids(self, x: torch.Tensor, x_ids: torch.Tensor) -> torch.Tensor: ...

    def _unpatchify_latents(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode_prompt(self, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


class _Flux2(Family[Flux2PipelineLike]):
    """What every FLUX.2 pipeline shares: references, sizes, previews."""

    max_images_supported = HARD_MAX_IMAGES

    @property
    def size_multiple(self) -> int:
        return int(self.pipeline.vae_scale_factor) * 2

    def check(self, spec: EditSpec) -> None:
        """Refuse references the pipeline's own check would raise on: a side under 64 px, an aspect over 8."""
        checker = self.pipeline.image_processor
        for image in spec.images:
            try:
                checker.check_image_input(image.rgb)
            except ValueError:
                raise invalid(
                    image.param,
                    f"The image in '{image.param}' is {image.size}; this model needs both sides at least "
                    f"{MIN_REFERENCE_SIDE} px and an aspect ratio of at most {MAX_REFERENCE_ASPECT}:1.",
                    code="invalid_image",
                ) from None

    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        pipeline = self.pipeline_of(call)
        size = call.generated_size
        vae = pipeline.vae
        multiple = int(pipeline.vae_scale_factor) * 2
        # The pipelines scatter the token sequence back into a grid by position
        # ids built from the latent grid's shape; an empty tensor gives the shape.
        grid = torch.empty(latents.shape[0], 0, size.height // multiple, size.width // multiple)
        ids = pipeline._prepare_latent_ids(grid).to(latents.device)
        unpacked = pipeline._unpack_latents_with_ids(latents, ids)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(unpacked.device, unpacked.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            unpacked.device, unpacked.dtype
        )
        patched = pipeline._unpatchify_latents(unpacked * std + mean).to(vae.dtype)
        decoded = vae.decode(patched, return_dict=False)[0]
        return postprocess(pipeline, decoded)

    def reference_size(self, image: InputImage, spec: EditSpec) -> Size:
        """References over 1 MP are shrunk to 1 MP; every side is floored to the size multiple."""
        return _within_one_megapixel(image.size, self.size_multiple)

    def arguments(self, pipeline: Flux2PipelineLike, spec: EditSpec) -> dict[str, Any]:
        return {
            "image": [image.rgb for image in spec.images],
            "prompt": spec.prompt,
            "guidance_scale": spec.guidance_scale,
            "height": spec.size.height,
            "width": spec.size.width,
            "num_inference_steps": spec.steps,
            "num_images_per_prompt": len(spec.seeds),
            "generator": generators(spec.seeds),
            "output_type": "pil",
        }


class Flux2Family(_Flux2):
    """FLUX.2-dev: several references, embedded guidance, no negative prompt; masks are composited."""

    name = "flux2"
    pipeline_pairs = (("Flux2Pipeline", None),)
    #: The text encoder and the VAE (by its mode): FLUX.2's LoRAs change the transformer alone.
    encoders: ClassVar[dict[str, tuple[str, ...]]] = {"Flux2Pipeline": ("encode_prompt", "_encode_vae_image")}
    default_max_images = 6
    defaults = Defaults(steps=50, guidance_scale=4.0)


@dataclass(frozen=True, kw_only=True)
class NegativePromptCall(PipelineCall):
    """A Klein call that encodes ``negative_prompt`` into ``negative_prompt_embeds`` when it runs.

    The Klein pipelines take no negative prompt text, only embeddings; encoding
    them here keeps the text encoder on the engine thread, like every other model call.
    """

    pipeline: Flux2PipelineLike
    negative_prompt: str

    def invoke(self, on_step: StepHook | None = None) -> list[Image.Image]:
        pipeline = self.pipeline
        # The call encodes its prompt with these; the negative must match them.
        options = {
            key: self.kwargs[key] for key in ("max_sequence_length", "text_encoder_out_layers") if key in self.kwargs
        }
        with torch.inference_mode():
            # One copy: the pipeline repeats it for num_images_per_prompt itself.
            embeds, _ = pipeline.encode_prompt(
                prompt=self.negative_prompt, device=pipeline._execution_device, num_images_per_prompt=1, **options
            )
        kwargs = {**self.kwargs, "negative_prompt_embeds": embeds}
        plain = PipelineCall(
            pipeline=pipeline,
            kwargs=kwargs,
            num_images=self.num_images,
            generated_size=self.generated_size,
            cfg_until=self.cfg_until,
            cache=self.cache,
        )
        return plain.invoke(on_step)


class Flux2KleinFamily(_Flux2):
    """FLUX.2-klein, base or step-distilled: several references; masks are inpainted natively."""

    guidance = "sequential"
    #: As FLUX.2-dev's.
    encoders: ClassVar[dict[str, tuple[str, ...]]] = {
        "Flux2KleinPipeline": ("encode_prompt", "_encode_vae_image"),
        "Flux2KleinInpaintPipeline": ("encode_prompt", "_encode_vae_image"),
    }

    name = "flux2-klein"
    pipeline_pairs = (("Flux2KleinPipeline", "Flux2KleinInpaintPipeline"),)
    default_max_images = 4
    #: The base models' defaults; the step-distilled ones run ``DISTILLED_STEPS`` at ``DISTILLED_GUIDANCE_SCALE``.
    #: Inpainting repaints the masked area fully unless the request says otherwise.
    defaults = Defaults(steps=50, guidance_scale=4.0, inpaint_strength=1.0)

    @classmethod
    def guidance_of(cls, pipeline: Pipeline) -> GuidanceKind:
        """``none`` for a step-distilled checkpoint: its pipeline never runs the second branch."""
        return "none" if _is_distilled(pipeline) else cls.guidance

    @property
    def distilled(self) -> bool:
        """Whether the model is step-distilled (``is_distilled``): no CFG, few steps."""
        return _is_distilled(self.pipeline)

    def family_defaults(self) -> Defaults:
        if self.distilled:
            return dataclasses.replace(self.defaults, steps=DISTILLED_STEPS, guidance_scale=DISTILLED_GUIDANCE_SCALE)
        return self.defaults

    def arguments(self, pipeline: Flux2PipelineLike, spec: EditSpec) -> dict[str, Any]:
        arguments = super().arguments(pipeline, spec)
        if spec.mask is None:
            return arguments
        size = spec.size
        first = spec.images[0].rgb
        if first.size != (size.width, size.height):  # the inpainting pipeline makes its image's size
            first = first.resize((size.width, size.height), Image.Resampling.LANCZOS)
        return {
            **arguments,
            "image": first,
            "mask_image": spec.mask,
            "image_reference": [image.rgb for image in spec.images[1:]] or None,
            "strength": spec.strength,
        }

    def generated_size(self, pipeline: Flux2PipelineLike, spec: EditSpec) -> Size:
        if self.inpaint_pipeline is None or pipeline is not self.inpaint_pipeline:
            return spec.size
        # The image arrives at ``size``; the pipeline shrinks it to 1 MP and floors it to the multiple.
        return _within_one_megapixel(spec.size, self.size_multiple)

    def check(self, spec: EditSpec) -> None:
        """Also refuse a strength that leaves the inpainting pipeline no step to run."""
        super().check(spec)
        if spec.mask is not None:
            assert spec.strength is not None, "the family has a default"
            require_a_denoising_step(spec.steps, spec.strength)

    def plan(self, spec: EditSpec) -> EditPlan:
        plan = super().plan(spec)
        negative_prompt = self._negative_prompt(spec)
        if negative_prompt is None:
            return plan
        calls = [
            NegativePromptCall(
                pipeline=self.pipeline_of(call),
                kwargs=call.kwargs,
                num_images=call.num_images,
                generated_size=call.generated_size,
                cfg_until=call.cfg_until,
                cache=call.cache,
                negative_prompt=negative_prompt,
            )
            for call in plan.calls
        ]
        return dataclasses.replace(plan, calls=calls)

    def _negative_prompt(self, spec: EditSpec) -> str | None:
        """The request's negative prompt when guidance really runs (a base model, guidance above 1), else None."""
        guidance_scale = spec.guidance_scale
        if spec.negative_prompt is None or self.distilled or guidance_scale is None or guidance_scale <= 1:
            return None
        return spec.negative_prompt


def _is_distilled(pipeline: Pipeline) -> bool:
    return bool(getattr(getattr(pipeline, "config", None), "is_distilled", False))
