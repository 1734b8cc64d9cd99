"""Qwen-Image-Edit: the original (single image, with an inpainting pipeline) and 2509/2511 (multi-image).

Family quirks handled here:

* ``QwenImageEditPlusPipeline`` (2509/2511) takes several references: 4 by
  default (what the model is tuned for); the pipeline has no limit, so
  operators may allow up to 16. It has no inpainting counterpart, so a mask is
  composited. ``QwenImageEditPipeline`` takes one image and inpaints with
  ``QwenImageEditInpaintPipeline`` built from the same weights.
* Sizes are multiples of twice the VAE scale factor (16 for the real VAE). The
  inpainting pipeline ignores ``height``/``width`` and makes about 1 MP at the
  input's aspect ratio; its output is resized to the requested size.
* ``guidance_scale`` only matters for guidance-distilled transformers; true
  classifier-free guidance (``true_cfg_scale``, 4 by default) runs only when a
  negative prompt is given, so ``" "`` is supplied when the caller sends none,
  as the model card recommends.
* 40 steps is the 2511 model card's default, 50 the original's.
* Each output image is its own pipeline call: at about 1 MP the transformer is
  compute-bound, so batching ``n`` images saves little, while separate calls
  keep peak memory flat and make image i of a request identical to an ``n=1``
  request with seed + i.
* The transformer's rotary position table has 4096 text-and-image positions,
  so a long prompt (after the system template and the vision tokens of every
  reference) is refused with a 400 naming the prompt, instead of failing
  inside the model; so is a reference too elongated for the pipeline's resizing.
* Previews: unpack the packed latents and undo the VAE's latent normalisation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from imgedit.config import HARD_MAX_IMAGES
from imgedit.errors import invalid
from imgedit.families.base import FamilyAdapter, PipelineCall, generators, postprocess, require_a_denoising_step
from imgedit.images import InputImage
from imgedit.request import EditRequest
from imgedit.sizing import Size

EMPTY_NEGATIVE_PROMPT = " "
#: Length of ``QwenEmbedRope``'s position table (diffusers ``transformer_qwenimage.py``).
ROPE_POSITIONS = 4096
#: The pixel area the single-image pipelines resize their input to.
SINGLE_IMAGE_AREA = 1024 * 1024


def _strength(request: EditRequest) -> float:
    """Inpainting repaints the masked area fully unless the request says otherwise."""
    return request.strength if request.strength is not None else 1.0


class _QwenImageEdit(FamilyAdapter):
    """What every Qwen-Image-Edit pipeline shares."""

    default_true_cfg_scale = 4.0
    #: Used only when the transformer is guidance-distilled.
    distilled_guidance_scale: ClassVar[float] = 1.0

    @property
    def size_multiple(self) -> int:
        return int(self.pipeline.vae_scale_factor) * 2

    def arguments(
        self,
        pipeline: Any,
        request: EditRequest,
        images: Sequence[InputImage],
        size: Size,
        steps: int,
        seeds: Sequence[int],
        mask: Image.Image | None,
    ) -> dict[str, Any]:
        true_cfg_scale, negative_prompt = self._guidance(request)
        guidance_scale = request.guidance_scale if request.guidance_scale is not None else self.guidance_scale
        if guidance_scale is None and pipeline.transformer.config.guidance_embeds:
            guidance_scale = self.distilled_guidance_scale
        return {
            "image": self._pipeline_images(images),
            "mask_image": mask,
            "strength": _strength(request),
            "prompt": request.prompt,
            "negative_prompt": negative_prompt,
            "true_cfg_scale": true_cfg_scale,
            "guidance_scale": guidance_scale,
            "height": size.height,
            "width": size.width,
            "num_inference_steps": steps,
            "num_images_per_prompt": len(seeds),
            "generator": generators(seeds),
            "output_type": "pil",
        }

    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        pipeline = call.pipeline
        size = call.generated_size
        vae = pipeline.vae
        unpacked = pipeline._unpack_latents(latents, size.height, size.width, pipeline.vae_scale_factor).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(unpacked.device, unpacked.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(unpacked.device, unpacked.dtype)
        decoded = vae.decode(unpacked * std + mean, return_dict=False)[0][:, :, 0]
        return postprocess(pipeline, decoded)

    def check(self, request: EditRequest, images: Sequence[InputImage], size: Size) -> None:
        """Refuse what the pipeline would fail on: elongated references, prompts past the position table."""
        processor = self.pipeline.processor.image_processor
        latent_sides = [size.width, size.height]
        vision_tokens = 0
        for image, source in zip(images, request.sources, strict=True):
            vision_size, reference_size = self._reference_sizes(image.size)
            try:
                if min(vision_size.width, vision_size.height, reference_size.width, reference_size.height) <= 0:
                    raise ValueError("resized to nothing")
                patches = processor.get_number_of_image_patches(vision_size.height, vision_size.width)
            except ValueError:
                raise invalid(
                    source.param,
                    f"The image in '{source.param}' ({image.size}) is too elongated for this model.",
                    code="invalid_image",
                ) from None
            vision_tokens += patches // processor.merge_size**2
            latent_sides += [reference_size.width, reference_size.height]
        # Text positions start after the largest half-side of any image's latent grid (scale_rope).
        text_budget = ROPE_POSITIONS - max(side // self.size_multiple for side in latent_sides) // 2
        texts = {"prompt": request.prompt}
        true_cfg_scale, negative_prompt = self._guidance(request)
        if negative_prompt is not None and true_cfg_scale > 1:
            texts["negative_prompt"] = negative_prompt
        for param, text in texts.items():
            length = self._text_tokens(text, len(images)) + vision_tokens
            if length > text_budget:
                raise invalid(
                    param,
                    f"The {param.replace('_', ' ')} is too long for this model with these images: it makes "
                    f"{length} text and vision tokens, and at most {text_budget} fit.",
                    code="prompt_too_long",
                )

    def _guidance(self, request: EditRequest) -> tuple[float, str | None]:
        """``true_cfg_scale`` and the negative prompt to run with."""
        true_cfg_scale = request.true_cfg_scale if request.true_cfg_scale is not None else self.true_cfg_scale
        assert true_cfg_scale is not None
        negative_prompt = request.negative_prompt
        if negative_prompt is None and true_cfg_scale > 1:
            negative_prompt = EMPTY_NEGATIVE_PROMPT
        return true_cfg_scale, negative_prompt

    def _module(self) -> Any:
        return sys.modules[type(self.pipeline).__module__]

    def _pipeline_images(self, images: Sequence[InputImage]) -> Any:
        raise NotImplementedError

    def _reference_sizes(self, size: Size) -> tuple[Size, Size]:
        """The sizes the pipeline resizes a reference to: for the vision encoder, and for the VAE."""
        raise NotImplementedError

    def _text_tokens(self, text: str, image_count: int) -> int:
        """Tokens the prompt template gives ``text`` after the dropped system prefix, image placeholders excluded."""
        raise NotImplementedError


class QwenImageEditPlusAdapter(_QwenImageEdit):
    """Qwen-Image-Edit-2509 and -2511: several reference images; masks are composited."""

    name = "qwen-image-edit-plus"
    pipeline_pairs = (("QwenImageEditPlusPipeline", None),)
    default_max_images = 4
    max_images_supported = HARD_MAX_IMAGES
    default_steps = 40

    def _pipeline_images(self, images: Sequence[InputImage]) -> Any:
        return [image.rgb for image in images]

    def _reference_sizes(self, size: Size) -> tuple[Size, Size]:
        module = self._module()
        ratio = size.width / size.height
        return (
            Size(*module.calculate_dimensions(module.CONDITION_IMAGE_SIZE, ratio)),
            Size(*module.calculate_dimensions(module.VAE_IMAGE_SIZE, ratio)),
        )

    def _text_tokens(self, text: str, image_count: int) -> int:
        pictures = "".join(
            f"Picture {index + 1}: <|vision_start|><|image_pad|><|vision_end|>" for index in range(image_count)
        )
        full = self.pipeline.prompt_template_encode.format(pictures + text)
        tokens = len(self.pipeline.tokenizer(full).input_ids)
        return tokens - self.pipeline.prompt_template_encode_start_idx - image_count


class QwenImageEditAdapter(_QwenImageEdit):
    """The original Qwen-Image-Edit: one image; masks are inpainted natively."""

    name = "qwen-image-edit"
    pipeline_pairs = (("QwenImageEditPipeline", "QwenImageEditInpaintPipeline"),)
    default_steps = 50
    fusable = True

    def check(self, request: EditRequest, images: Sequence[InputImage], size: Size) -> None:
        super().check(request, images, size)
        if request.mask is not None and self.native_mask:
            require_a_denoising_step(self.steps_for(request), _strength(request))

    def generated_size(self, pipeline: Any, images: Sequence[InputImage], size: Size) -> Size:
        if pipeline is self.inpaint_pipeline:  # it ignores height and width
            _, reference = self._reference_sizes(images[0].size)
            multiple = self.size_multiple
            return Size(reference.width // multiple * multiple, reference.height // multiple * multiple)
        return size

    def _pipeline_images(self, images: Sequence[InputImage]) -> Any:
        return images[0].rgb

    def _reference_sizes(self, size: Size) -> tuple[Size, Size]:
        width, height, _ = self._module().calculate_dimensions(SINGLE_IMAGE_AREA, size.width / size.height)
        return Size(width, height), Size(width, height)

    def _text_tokens(self, text: str, image_count: int) -> int:
        full = self.pipeline.prompt_template_encode.format(text)
        tokens = len(self.pipeline.tokenizer(full).input_ids)
        return tokens - self.pipeline.prompt_template_encode_start_idx - image_count
