"""Qwen-Image-Edit-2509 and -2511 (``QwenImageEditPlusPipeline``).

Family quirks handled here:

* 4 reference images by default (what the model is tuned for); the pipeline
  itself has no limit, so operators may allow up to 16;
* sizes are multiples of twice the VAE scale factor (16 for the real VAE);
* ``guidance_scale`` only matters for guidance-distilled transformers; true
  classifier-free guidance (``true_cfg_scale``) runs only when a negative
  prompt is given, so ``" "`` is supplied when the caller sends none, as the
  model card recommends;
* 40 steps and ``true_cfg_scale=4`` are the model card's defaults for 2511;
* each output image is its own pipeline call (``batches_images`` is False): at
  about 1 MP the transformer is compute-bound, so batching ``n`` images saves
  little, while separate calls keep peak memory flat and make image i of a
  request identical to an ``n=1`` request with seed + i;
* the transformer's rotary position table has 4096 text-and-image positions,
  so a long prompt (after the system template and the vision tokens of every
  reference image) is refused with a 400 naming the prompt, instead of
  failing inside the model; so is a reference image too narrow for the
  pipeline's resizing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from imgedit.config import HARD_MAX_IMAGES
from imgedit.errors import invalid
from imgedit.families.base import FamilyAdapter, generators
from imgedit.images import InputImage
from imgedit.request import EditRequest
from imgedit.sizing import Size

DEFAULT_TRUE_CFG_SCALE = 4.0
DEFAULT_GUIDANCE_SCALE = 1.0
EMPTY_NEGATIVE_PROMPT = " "
#: Length of ``QwenEmbedRope``'s position table (diffusers ``transformer_qwenimage.py``).
ROPE_POSITIONS = 4096


class QwenImageEditAdapter(FamilyAdapter):
    name = "qwen-image-edit"
    pipeline_classes = ("QwenImageEditPlusPipeline",)
    default_max_images = 4
    max_images_supported = HARD_MAX_IMAGES
    default_steps = 40

    @property
    def size_multiple(self) -> int:
        return int(self.pipeline.vae_scale_factor) * 2

    def arguments(
        self, request: EditRequest, images: Sequence[InputImage], size: Size, steps: int, seeds: Sequence[int]
    ) -> dict[str, Any]:
        true_cfg_scale, negative_prompt = self._guidance(request)
        guidance_scale = request.guidance_scale
        if guidance_scale is None and self.pipeline.transformer.config.guidance_embeds:
            guidance_scale = DEFAULT_GUIDANCE_SCALE
        return {
            "image": [image.rgb for image in images],
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

    def check(self, request: EditRequest, images: Sequence[InputImage], size: Size) -> None:
        """Refuse what the pipeline would fail on: elongated references, prompts past the position table."""
        module = sys.modules[type(self.pipeline).__module__]
        processor = self.pipeline.processor.image_processor
        vae_sides = [size.width, size.height]
        vision_tokens = 0
        for image, source in zip(images, request.sources, strict=True):
            ratio = image.size.width / image.size.height
            width, height = module.calculate_dimensions(module.CONDITION_IMAGE_SIZE, ratio)
            vae = module.calculate_dimensions(module.VAE_IMAGE_SIZE, ratio)
            try:
                if min(width, height, *vae) <= 0:
                    raise ValueError("resized to nothing")
                vision_tokens += processor.get_number_of_image_patches(height, width) // processor.merge_size**2
            except ValueError:
                raise invalid(
                    source.param,
                    f"The image in '{source.param}' ({image.size}) is too elongated for this model.",
                    code="invalid_image",
                ) from None
            vae_sides += vae
        # Text positions start after the largest half-side of any image's latent grid (scale_rope).
        text_budget = ROPE_POSITIONS - max(side // self.size_multiple for side in vae_sides) // 2
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
        true_cfg_scale = DEFAULT_TRUE_CFG_SCALE if request.true_cfg_scale is None else request.true_cfg_scale
        negative_prompt = request.negative_prompt
        if negative_prompt is None and true_cfg_scale > 1:
            negative_prompt = EMPTY_NEGATIVE_PROMPT
        return true_cfg_scale, negative_prompt

    def _text_tokens(self, text: str, image_count: int) -> int:
        """Tokens the pipeline's prompt template gives ``text``, without the dropped system prefix
        and counting each image placeholder as nothing (its vision tokens are counted apart)."""
        pictures = "".join(
            f"Picture {index + 1}: <|vision_start|><|image_pad|><|vision_end|>" for index in range(image_count)
        )
        full = self.pipeline.prompt_template_encode.format(pictures + text)
        tokens = len(self.pipeline.tokenizer(full).input_ids)
        return tokens - self.pipeline.prompt_template_encode_start_idx - image_count
