"""FLUX.1 Kontext: one reference image, edited by ``FluxKontextPipeline`` or inpainted by its inpainting twin.

Family quirks handled here:

* Kontext sizes its output by ``max_area``, not by ``height``/``width``: those
  only give the aspect ratio, and the pipeline makes
  ``round(sqrt(max_area * ratio))`` by ``round(sqrt(max_area / ratio))``, each
  floored to a multiple of twice the VAE scale factor (16 for the real VAE).
  Passing ``max_area = width * height`` along with the requested width and
  height therefore makes exactly the requested size for every size that is a
  multiple of 16 (checked for every such size up to 8192x8192).
* ``_auto_resize`` (the pipeline's default, kept for edits) only concerns the
  reference: it is resized to the trained Kontext resolution (about 1 MP)
  nearest its aspect ratio, whatever the output size. It never changes the
  output size of ``FluxKontextPipeline``.
* ``FluxKontextInpaintPipeline`` ignores ``height``, ``width`` and
  ``max_area``: it generates at the size of its (resized) input image. The
  input is therefore resized here to the output size, the mask too, and
  ``_auto_resize`` is turned off so that the pipeline keeps that size.
  ``image_reference`` is not passed: without it the pipeline uses the input
  image itself as the Kontext context, which is what an edit with a mask means;
  the reference exists to paint a *different* picture into the masked area,
  which the OpenAI API cannot express. ``strength`` defaults to 1.0 (the masked
  area is repainted fully); a strength that leaves no denoising step is refused,
  and so is an input image narrower than one size multiple (the pipeline would
  divide by zero).
* ``guidance_scale`` (3.5 by default) is embedded guidance, a transformer input
  of guidance-distilled Kontext-dev: one forward pass per step. True
  classifier-free guidance (``true_cfg_scale``, 1.0 by default, i.e. off) runs
  only above 1 and with a negative prompt, so an empty one is supplied when the
  caller sends none; a negative prompt without true CFG is dropped, since the
  pipeline would ignore it.
* Prompts longer than the text encoders take are truncated by the pipeline (77
  CLIP tokens, ``max_sequence_length`` = 512 T5 tokens) with a warning, never
  refused; nothing to check.
* Each output image is its own pipeline call (``batches_images`` False), though
  the pipeline takes a list of prompts and ``num_images_per_prompt``: separate
  calls make image i of a request byte-identical to an ``n=1`` request with
  seed + i, and keep peak memory flat at large sizes where batching saves little.
* Previews: unpack the packed 2x2 latents, undo the VAE's scaling and shift,
  decode and postprocess, as the pipelines do after their last step.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from imgedit.errors import invalid
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall, generators, postprocess
from imgedit.model.families.base import Family, require_a_denoising_step
from imgedit.model.pipeline import Pipeline
from imgedit.model.spec import Defaults, EditSpec

#: The unconditional prompt of true classifier-free guidance when the caller gives no negative prompt.
EMPTY_NEGATIVE_PROMPT = ""


class KontextPipelineLike(Pipeline, Protocol):
    """What this family reads of its pipelines, beyond what every pipeline has."""

    vae: Any
    vae_scale_factor: int

    def _unpack_latents(
        self, latents: torch.Tensor, height: int, width: int, vae_scale_factor: int
    ) -> torch.Tensor: ...


class FluxKontextFamily(Family[KontextPipelineLike]):
    """FLUX.1 Kontext (dev and its fine-tunes): one input image; masks are inpainted natively."""

    guidance = "sequential"
    #: T5 and the VAE (by its mode): the LoRAs diffusers loads for FLUX.1 reach only CLIP among the encoders.
    encoders: ClassVar[dict[str, tuple[str, ...]]] = {
        "FluxKontextPipeline": ("_get_t5_prompt_embeds", "_encode_vae_image"),
        "FluxKontextInpaintPipeline": ("_get_t5_prompt_embeds", "_encode_vae_image"),
    }

    name = "flux-kontext"
    pipeline_pairs = (("FluxKontextPipeline", "FluxKontextInpaintPipeline"),)
    #: Inpainting repaints the masked area fully unless the request says otherwise.
    defaults = Defaults(steps=28, guidance_scale=3.5, true_cfg_scale=1.0, inpaint_strength=1.0)
    fusable = True

    @property
    def size_multiple(self) -> int:
        # Latents are packed in 2x2 patches, so each side spans an even number of latent pixels.
        return int(self.pipeline.vae_scale_factor) * 2

    def arguments(self, pipeline: KontextPipelineLike, spec: EditSpec) -> dict[str, Any]:
        size = spec.size
        image = spec.images[0].rgb
        inpainting = spec.mask is not None
        if inpainting and image.size != (size.width, size.height):
            # The inpainting pipeline generates at its input's size, so the input sets the output size.
            image = image.resize((size.width, size.height), Image.Resampling.LANCZOS)
        return {
            "image": image,
            "mask_image": spec.mask,
            "strength": spec.strength if inpainting else None,
            "prompt": spec.prompt,
            "negative_prompt": self._negative_prompt(spec),
            "true_cfg_scale": spec.true_cfg_scale,
            "guidance_scale": spec.guidance_scale,
            "height": size.height,
            "width": size.width,
            "max_area": size.pixels,
            # Edits: snap the reference to a trained resolution. Inpainting: keep the input at the output size.
            "_auto_resize": not inpainting,
            "num_inference_steps": spec.steps,
            "num_images_per_prompt": len(spec.seeds),
            "generator": generators(spec.seeds),
            "output_type": "pil",
        }

    def reference_size(self, image: InputImage, spec: EditSpec) -> Size:
        """Edits snap the reference to the trained resolution nearest its aspect; inpainting keeps the output's."""
        if spec.mask is not None:
            return spec.size
        preferred = sys.modules[type(self.pipeline).__module__].PREFERRED_KONTEXT_RESOLUTIONS
        ratio = image.size.width / image.size.height
        _, width, height = min((abs(ratio - width / height), width, height) for width, height in preferred)
        multiple = self.size_multiple
        return Size(width // multiple * multiple, height // multiple * multiple)

    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        """Decode packed latents of shape (images, (height/16)*(width/16), 4*latent channels) as the pipeline does."""
        pipeline = self.pipeline_of(call)
        size = call.generated_size
        vae = pipeline.vae
        unpacked = pipeline._unpack_latents(latents, size.height, size.width, pipeline.vae_scale_factor)
        unpacked = unpacked / vae.config.scaling_factor + vae.config.shift_factor
        decoded = vae.decode(unpacked.to(vae.dtype), return_dict=False)[0]
        return postprocess(pipeline, decoded)

    def check(self, spec: EditSpec) -> None:
        """Refuse what the pipelines would crash on: an input under one size multiple, a stepless strength."""
        smallest = self.size_multiple
        for image in spec.images:
            if min(image.size.width, image.size.height) < smallest:
                # The pipeline floors the reference's sides to the multiple and divides by them.
                raise invalid(
                    image.param,
                    f"The image in '{image.param}' is {image.size}; "
                    f"this model needs both sides at least {smallest} px.",
                    code="invalid_image",
                )
        if spec.mask is not None:
            assert spec.strength is not None, "the family has a default"
            require_a_denoising_step(spec.steps, spec.strength)

    @staticmethod
    def _negative_prompt(spec: EditSpec) -> str | None:
        """The negative prompt when true CFG runs (a scale above 1), an empty one if none was given; else None."""
        if spec.true_cfg_scale is None or spec.true_cfg_scale <= 1:
            return None  # the pipeline would ignore it
        return spec.negative_prompt if spec.negative_prompt is not None else EMPTY_NEGATIVE_PROMPT
