"""Qwen-Image-Edit-2509 and -2511 (``QwenImageEditPlusPipeline``).

Family quirks handled here:

* up to 4 reference images by default (the model card's limit);
* sizes are multiples of twice the VAE scale factor (16 for the real VAE);
* ``guidance_scale`` only matters for guidance-distilled transformers; true
  classifier-free guidance (``true_cfg_scale``) runs only when a negative
  prompt is given, so ``" "`` is supplied when the caller sends none, as the
  model card recommends;
* 40 steps and ``true_cfg_scale=4`` are the model card's defaults for 2511;
* each output image is its own pipeline call (``batches_images`` is False): at
  about 1 MP the transformer is compute-bound, so batching ``n`` images saves
  little, while separate calls keep peak memory flat and make image i of a
  request identical to an ``n=1`` request with seed + i.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgedit.families.base import FamilyAdapter, generators
from imgedit.images import InputImage
from imgedit.request import EditRequest
from imgedit.sizing import Size

DEFAULT_TRUE_CFG_SCALE = 4.0
DEFAULT_GUIDANCE_SCALE = 1.0
EMPTY_NEGATIVE_PROMPT = " "


class QwenImageEditAdapter(FamilyAdapter):
    name = "qwen-image-edit"
    pipeline_classes = ("QwenImageEditPlusPipeline",)
    max_images_supported = 4
    default_steps = 40

    @property
    def size_multiple(self) -> int:
        return int(self.pipeline.vae_scale_factor) * 2

    def arguments(
        self, request: EditRequest, images: Sequence[InputImage], size: Size, steps: int, seeds: Sequence[int]
    ) -> dict[str, Any]:
        true_cfg_scale = DEFAULT_TRUE_CFG_SCALE if request.true_cfg_scale is None else request.true_cfg_scale
        negative_prompt = request.negative_prompt
        if negative_prompt is None and true_cfg_scale > 1:
            negative_prompt = EMPTY_NEGATIVE_PROMPT
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
