"""Stable Diffusion 1.x/2.x and SDXL: InstructPix2Pix, and plain checkpoints run as img2img and inpainting.

Family quirks handled here:

* InstructPix2Pix (``instruct-pix2pix``) edits from an instruction; its UNet
  reads the input image's latents beside the noisy ones. Neither pipeline has an
  inpainting counterpart, so a mask is composited. ``image_guidance_scale``
  (1.5 by default, as both pipelines and the authors use) says how closely to
  follow the input image.
* Plain checkpoints (``stable-diffusion``) are published as text-to-image
  pipelines; diffusers' auto pipelines turn them into img2img and inpainting
  pipelines sharing the same weights. A dedicated inpainting checkpoint has a
  9-channel UNet (latents, mask, masked-image latents) and cannot run as
  img2img, so a request without a mask runs its inpainting pipeline with a
  mask covering everything.
* ``strength``: 0.8 without a mask (img2img keeps the composition), 1.0 with
  one (the masked area is repainted from scratch, as an OpenAI mask asks). As in
  diffusers, ``num_inference_steps`` is the length of the noise schedule and
  only its last ``strength`` share runs; when that share is less than one step,
  the schedule is lengthened until exactly one step runs. A strength so small
  that no schedule the scheduler allows runs a step is refused with a 400.
* Sizes are multiples of the VAE scale factor (8). SD InstructPix2Pix and both
  img2img pipelines make the input image's size and ignore ``height``/``width``,
  so the input is resized to the requested size first; the others take the size
  too and agree.
* ``guidance_scale`` defaults to 7.5 for SD and 5.0 for SDXL pipelines (the
  SDXL inpainting pipeline's own default is 7.5; 5.0 is what SDXL is tuned for),
  unless the operator set a default. ``negative_prompt`` passes through.
* Steps: InstructPix2Pix defaults to 50 (the pipelines' 100 doubles the time for
  little gain with the Euler ancestral scheduler the model ships with; the
  authors' demo app also defaults to 50); plain checkpoints to the pipelines' 50.
* Previews decode the 4-channel latents every step callback sees (also for the
  9-channel inpainting UNet, whose extra inputs are only concatenated for the
  UNet) the way the pipelines do: SDXL undoes ``latents_mean``/``latents_std``
  when the VAE has them and decodes a float16 VAE marked ``force_upcast`` in
  float32. The SDXL InstructPix2Pix pipeline only has the legacy ``callback``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from imgedit.errors import invalid
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall, generators, postprocess
from imgedit.model.families.base import Family, from_pipe
from imgedit.model.pipeline import Pipeline
from imgedit.model.spec import Defaults, EditSpec

#: ``guidance_scale`` the Stable Diffusion 1.x/2.x and SDXL models are tuned for.
SD_GUIDANCE_SCALE = 7.5
SDXL_GUIDANCE_SCALE = 5.0
#: ``strength`` without a mask (img2img) and with one (inpainting).
IMG2IMG_STRENGTH = 0.8
INPAINT_STRENGTH = 1.0
#: UNet input channels of dedicated inpainting checkpoints: latents, mask and masked-image latents.
INPAINT_UNET_CHANNELS = 9
#: Text-to-image pipeline classes that ``stable-diffusion`` turns into img2img and inpainting ones.
TEXT_TO_IMAGE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def _class_names(pipeline: Pipeline) -> set[str]:
    return {cls.__name__ for cls in type(pipeline).__mro__}


def _is_xl(pipeline: Pipeline) -> bool:
    return any(name.startswith("StableDiffusionXL") for name in _class_names(pipeline))


def _inpaints_only(pipeline: Pipeline) -> bool:
    """Whether the UNet is an inpainting one, which needs a mask on every call."""
    unet = getattr(pipeline, "unet", None)
    return unet is not None and unet.config.in_channels == INPAINT_UNET_CHANNELS


def _at_size(image: InputImage, size: Size) -> Image.Image:
    """The RGB input at ``size``, which pipelines that size their output by the input then keep."""
    if image.rgb.size == (size.width, size.height):
        return image.rgb
    return image.rgb.resize((size.width, size.height), Image.Resampling.LANCZOS)


def _schedule_length(steps: int, strength: float) -> int:
    """The shortest schedule of at least ``steps`` in which ``strength`` runs at least one step.

    diffusers runs ``int(steps * strength)`` of the schedule's steps and fails on none.
    """
    length = max(steps, math.ceil(1 / strength))
    while int(length * strength) < 1:  # float rounding can leave the product just below 1
        length += 1
    return length


class StableDiffusionPipelineLike(Pipeline, Protocol):
    """What this family reads of its pipelines, beyond what every pipeline has."""

    vae: Any
    vae_scale_factor: int
    unet: Any
    scheduler: Any


class _StableDiffusion(Family[StableDiffusionPipelineLike]):
    """What every Stable Diffusion pipeline shares: size multiple, guidance, previews."""

    guidance = "batched"

    fusable = True

    @property
    def size_multiple(self) -> int:
        return int(self.pipeline.vae_scale_factor)

    def family_defaults(self) -> Defaults:
        guidance_scale = SDXL_GUIDANCE_SCALE if _is_xl(self.pipeline) else SD_GUIDANCE_SCALE
        return dataclasses.replace(self.defaults, guidance_scale=guidance_scale)

    def family_native_pixels(self) -> int:
        """The checkpoint's default resolution: its UNet's sample size in latents (512 for SD 1.5, 1024 for SDXL)."""
        sample = self.pipeline.unet.config.sample_size
        height, width = (sample, sample) if isinstance(sample, int) else sample
        return height * width * int(self.pipeline.vae_scale_factor) ** 2

    def _common(self, spec: EditSpec, steps: int) -> dict[str, Any]:
        return {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt,
            "guidance_scale": spec.guidance_scale,
            "height": spec.size.height,
            "width": spec.size.width,
            "num_inference_steps": steps,
            "num_images_per_prompt": len(spec.seeds),
            "generator": generators(spec.seeds),
            "output_type": "pil",
        }

    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        pipeline = self.pipeline_of(call)
        vae = pipeline.vae
        xl = _is_xl(pipeline)
        # SDXL's VAE overflows in float16; its pipelines decode in float32 when the config says so.
        upcast = xl and vae.dtype == torch.float16 and vae.config.force_upcast
        with torch.inference_mode():
            if upcast:
                vae.to(dtype=torch.float32)
            try:
                latents = latents.to(vae.device, vae.dtype)
                mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
                if xl and mean is not None and std is not None:
                    shape = (1, latents.shape[1], 1, 1)
                    mean_tensor = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
                    std_tensor = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
                    latents = latents * std_tensor / vae.config.scaling_factor + mean_tensor
                else:
                    latents = latents / vae.config.scaling_factor
                decoded = vae.decode(latents, return_dict=False)[0]
            finally:
                if upcast:
                    vae.to(dtype=torch.float16)
        return postprocess(pipeline, decoded)


class InstructPix2PixFamily(_StableDiffusion):
    """InstructPix2Pix on Stable Diffusion or SDXL: one image, an instruction; masks are composited."""

    name = "instruct-pix2pix"
    pipeline_pairs = (
        ("StableDiffusionInstructPix2PixPipeline", None),
        ("StableDiffusionXLInstructPix2PixPipeline", None),
    )
    defaults = Defaults(steps=50, image_guidance_scale=1.5)
    #: Image guidance is how closely InstructPix2Pix follows the input.
    fidelity: ClassVar[dict[str, Defaults]] = {
        "high": Defaults(image_guidance_scale=2.0),
        "low": Defaults(image_guidance_scale=1.2),
    }

    def arguments(self, pipeline: StableDiffusionPipelineLike, spec: EditSpec) -> dict[str, Any]:
        return {
            **self._common(spec, spec.steps),
            # SD's pipeline makes the input's size; SDXL's takes height/width as well.
            "image": _at_size(spec.images[0], spec.size),
            "image_guidance_scale": spec.image_guidance_scale,
        }


class StableDiffusionFamily(_StableDiffusion):
    """Plain Stable Diffusion and SDXL checkpoints as img2img, with native inpainting of masks."""

    name = "stable-diffusion"
    pipeline_pairs = (
        ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
        ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    )
    defaults = Defaults(steps=50, strength=IMG2IMG_STRENGTH, inpaint_strength=INPAINT_STRENGTH)
    #: Less img2img strength re-noises less of the input, so more of it stays.
    fidelity: ClassVar[dict[str, Defaults]] = {"high": Defaults(strength=0.5), "low": Defaults(strength=0.9)}

    @classmethod
    def pipeline_classes(cls) -> tuple[str, ...]:
        """The img2img and inpainting classes, and the text-to-image ones they are made from."""
        return (*super().pipeline_classes(), *TEXT_TO_IMAGE_CLASSES)

    def build_pipelines(
        self, loaded: StableDiffusionPipelineLike
    ) -> tuple[StableDiffusionPipelineLike, StableDiffusionPipelineLike | None]:
        """Img2img and inpainting pipelines sharing ``loaded``'s components.

        A text-to-image pipeline becomes both through diffusers' auto pipelines.
        A 9-channel inpainting UNet serves requests without a mask too (with a
        full mask), so its inpainting pipeline is both.
        """
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        names = _class_names(loaded)
        inpaint_names = {inpaint for _, inpaint in self.pipeline_pairs}
        if _inpaints_only(loaded):
            inpaint = loaded if names & inpaint_names else _auto(AutoPipelineForInpainting, loaded)
            return inpaint, inpaint
        if names & set(TEXT_TO_IMAGE_CLASSES):
            return _auto(AutoPipelineForImage2Image, loaded), _auto(AutoPipelineForInpainting, loaded)
        return super().build_pipelines(loaded)

    def check(self, spec: EditSpec) -> None:
        """Refuse a ``strength`` that would not run a single denoising step."""
        strength = self._strength(spec)
        most = int(self.pipeline.scheduler.config.num_train_timesteps)
        if strength <= 0 or _schedule_length(spec.steps, strength) > most:
            raise invalid(
                "strength",
                f"strength {strength:g} is too small for this model: it would not run a single denoising step; "
                f"use at least {1 / most:g}.",
            )

    def arguments(self, pipeline: StableDiffusionPipelineLike, spec: EditSpec) -> dict[str, Any]:
        strength = self._strength(spec)
        mask = spec.mask
        if mask is None and _inpaints_only(pipeline):
            mask = Image.new("L", (spec.size.width, spec.size.height), 255)  # repaint everything: img2img by inpainting
        return {
            **self._common(spec, _schedule_length(spec.steps, strength)),
            # The img2img pipelines make the input's size and take no height/width.
            "image": _at_size(spec.images[0], spec.size),
            "mask_image": mask,
            "strength": strength,
        }

    @staticmethod
    def _strength(spec: EditSpec) -> float:
        assert spec.strength is not None, "the family has a default"
        return spec.strength


def _auto(auto_class: Any, loaded: Any) -> Any:
    return from_pipe(auto_class, loaded)
