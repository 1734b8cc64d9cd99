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
* ``guidance_scale`` only matters for guidance-distilled transformers (1 by
  default there); true classifier-free guidance (``true_cfg_scale``, 4 by
  default) runs only when a negative prompt is given, so ``" "`` is supplied
  when the caller sends none, as the model card recommends.
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

import dataclasses
import sys
from typing import Any, ClassVar, Protocol

import torch
from PIL import Image

from imgedit.edit import HARD_MAX_IMAGES
from imgedit.errors import invalid
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall, Tokens, generators, postprocess
from imgedit.model.families.base import Family, require_a_denoising_step
from imgedit.model.pipeline import Pipeline
from imgedit.model.spec import Defaults, EditSpec

EMPTY_NEGATIVE_PROMPT = " "
#: Length of ``QwenEmbedRope``'s position table (diffusers ``transformer_qwenimage.py``).
ROPE_POSITIONS = 4096
#: The pixel area the single-image pipelines resize their input to.
SINGLE_IMAGE_AREA = 1024 * 1024
#: ``guidance_scale`` of guidance-distilled transformers (``guidance_embeds``), which need one.
DISTILLED_GUIDANCE_SCALE = 1.0


class QwenPipelineLike(Pipeline, Protocol):
    """What this family reads of its pipelines, beyond what every pipeline has."""

    vae: Any
    vae_scale_factor: int
    transformer: Any
    processor: Any
    tokenizer: Any
    prompt_template_encode: str
    prompt_template_encode_start_idx: int

    def _unpack_latents(
        self, latents: torch.Tensor, height: int, width: int, vae_scale_factor: int
    ) -> torch.Tensor: ...


class _QwenImageEdit(Family[QwenPipelineLike]):
    """What every Qwen-Image-Edit pipeline shares."""

    guidance = "sequential"
    # The vision-language encoder reads the prompt with the reference pictures. The edit pipelines' VAE encodes
    # them by the mode of its distribution; the inpainting one samples it with the request's generator, so its
    # VAE encodings are not kept.
    encoders: ClassVar[dict[str, tuple[str, ...]]] = {
        "QwenImageEditPlusPipeline": ("_get_qwen_prompt_embeds", "_encode_vae_image"),
        "QwenImageEditPipeline": ("_get_qwen_prompt_embeds", "_encode_vae_image"),
        "QwenImageEditInpaintPipeline": ("_get_qwen_prompt_embeds",),
    }

    @property
    def size_multiple(self) -> int:
        return int(self.pipeline.vae_scale_factor) * 2

    def family_defaults(self) -> Defaults:
        if self.pipeline.transformer.config.guidance_embeds:
            return dataclasses.replace(self.defaults, guidance_scale=DISTILLED_GUIDANCE_SCALE)
        return self.defaults

    def arguments(self, pipeline: QwenPipelineLike, spec: EditSpec) -> dict[str, Any]:
        return {
            "image": self._pipeline_images(spec.images),
            "mask_image": spec.mask,
            "strength": spec.strength,
            "prompt": spec.prompt,
            "negative_prompt": self._negative_prompt(spec),
            "true_cfg_scale": spec.true_cfg_scale,
            "guidance_scale": spec.guidance_scale,
            "height": spec.size.height,
            "width": spec.size.width,
            "num_inference_steps": spec.steps,
            "num_images_per_prompt": len(spec.seeds),
            "generator": generators(spec.seeds),
            "output_type": "pil",
        }

    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        pipeline = self.pipeline_of(call)
        size = call.generated_size
        vae = pipeline.vae
        unpacked = pipeline._unpack_latents(latents, size.height, size.width, pipeline.vae_scale_factor).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(unpacked.device, unpacked.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(unpacked.device, unpacked.dtype)
        decoded = vae.decode(unpacked * std + mean, return_dict=False)[0][:, :, 0]
        return postprocess(pipeline, decoded)

    def reference_size(self, image: InputImage, spec: EditSpec) -> Size:
        return self._reference_sizes(image.size)[1]

    def tokens(self, spec: EditSpec) -> Tokens:
        """Also counts the vision tokens each image becomes in the text encoder."""
        tokens = super().tokens(spec)
        vision = sum(self._vision_tokens(image) for image in spec.images)
        return dataclasses.replace(tokens, image_tokens=tokens.image_tokens + vision)

    def check(self, spec: EditSpec) -> None:
        """Refuse what the pipeline would fail on: elongated references, prompts past the position table."""
        latent_sides = [spec.size.width, spec.size.height]
        vision_tokens = 0
        for image in spec.images:
            try:
                vision_tokens += self._vision_tokens(image)
            except ValueError:
                raise invalid(
                    image.param,
                    f"The image in '{image.param}' ({image.size}) is too elongated for this model.",
                    code="invalid_image",
                ) from None
            reference_size = self._reference_sizes(image.size)[1]
            latent_sides += [reference_size.width, reference_size.height]
        # Text positions start after the largest half-side of any image's latent grid (scale_rope).
        text_budget = ROPE_POSITIONS - max(side // self.size_multiple for side in latent_sides) // 2
        texts = {"prompt": spec.prompt}
        negative_prompt = self._negative_prompt(spec)
        if negative_prompt is not None and self._true_cfg_scale(spec) > 1:
            texts["negative_prompt"] = negative_prompt
        for param, text in texts.items():
            length = self._text_tokens(text, len(spec.images)) + vision_tokens
            if length > text_budget:
                raise invalid(
                    param,
                    f"The {param.replace('_', ' ')} is too long for this model with these images: it makes "
                    f"{length} text and vision tokens, and at most {text_budget} fit.",
                    code="prompt_too_long",
                )

    def _vision_tokens(self, image: InputImage) -> int:
        """The tokens ``image`` becomes in the vision-language text encoder.

        Raises:
            ValueError: the pipeline would resize the image to nothing (too elongated).
        """
        processor = self.pipeline.processor.image_processor
        vision_size, reference_size = self._reference_sizes(image.size)
        if min(vision_size.width, vision_size.height, reference_size.width, reference_size.height) <= 0:
            raise ValueError("resized to nothing")
        patches = processor.get_number_of_image_patches(vision_size.height, vision_size.width)
        return patches // processor.merge_size**2

    @staticmethod
    def _true_cfg_scale(spec: EditSpec) -> float:
        assert spec.true_cfg_scale is not None, "the family has a default"
        return spec.true_cfg_scale

    def _negative_prompt(self, spec: EditSpec) -> str | None:
        """The request's negative prompt, or ``" "`` when true CFG runs and it gave none."""
        if spec.negative_prompt is None and self._true_cfg_scale(spec) > 1:
            return EMPTY_NEGATIVE_PROMPT
        return spec.negative_prompt

    def _module(self) -> Any:
        return sys.modules[type(self.pipeline).__module__]

    def _pipeline_images(self, images: tuple[InputImage, ...]) -> Any:
        raise NotImplementedError

    def _reference_sizes(self, size: Size) -> tuple[Size, Size]:
        """The sizes the pipeline resizes a reference to: for the vision encoder, and for the VAE."""
        raise NotImplementedError

    def _text_tokens(self, text: str, image_count: int) -> int:
        """Tokens the prompt template gives ``text`` after the dropped system prefix, image placeholders excluded."""
        raise NotImplementedError


class QwenImageEditPlusFamily(_QwenImageEdit):
    """Qwen-Image-Edit-2509 and -2511: several reference images; masks are composited."""

    name = "qwen-image-edit-plus"
    pipeline_pairs = (("QwenImageEditPlusPipeline", None),)
    default_max_images = 4
    max_images_supported = HARD_MAX_IMAGES
    defaults = Defaults(steps=40, true_cfg_scale=4.0)

    def _pipeline_images(self, images: tuple[InputImage, ...]) -> Any:
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


class QwenImageEditFamily(_QwenImageEdit):
    """The original Qwen-Image-Edit: one image; masks are inpainted natively."""

    name = "qwen-image-edit"
    pipeline_pairs = (("QwenImageEditPipeline", "QwenImageEditInpaintPipeline"),)
    #: Inpainting repaints the masked area fully unless the request says otherwise.
    defaults = Defaults(steps=50, true_cfg_scale=4.0, inpaint_strength=1.0)
    fusable = True

    def check(self, spec: EditSpec) -> None:
        super().check(spec)
        if spec.mask is not None:
            assert spec.strength is not None, "the family has a default"
            require_a_denoising_step(spec.steps, spec.strength)

    def generated_size(self, pipeline: QwenPipelineLike, spec: EditSpec) -> Size:
        if pipeline is self.inpaint_pipeline:  # it ignores height and width
            _, reference = self._reference_sizes(spec.images[0].size)
            multiple = self.size_multiple
            return Size(reference.width // multiple * multiple, reference.height // multiple * multiple)
        return spec.size

    def _pipeline_images(self, images: tuple[InputImage, ...]) -> Any:
        return images[0].rgb

    def _reference_sizes(self, size: Size) -> tuple[Size, Size]:
        width, height, _ = self._module().calculate_dimensions(SINGLE_IMAGE_AREA, size.width / size.height)
        return Size(width, height), Size(width, height)

    def _text_tokens(self, text: str, image_count: int) -> int:
        full = self.pipeline.prompt_template_encode.format(text)
        tokens = len(self.pipeline.tokenizer(full).input_ids)
        return tokens - self.pipeline.prompt_template_encode_start_idx - image_count
