from __future__ import annotations

import numpy as np
from PIL import Image

from imgedit.images import InputImage
from imgedit.request import EditRequest, ImageSource
from imgedit.sizing import Size

SIDE = 64


def assert_repaints_where_the_mask_is_white(adapter, steps: int = 4) -> None:
    """Native inpainting repaints inside the mask and keeps the outside, judged on the raw pipeline output.

    Tiny VAEs have random weights, so "kept" cannot mean "equal to the input".
    It means "independent of the guidance": outside the mask the pipeline blends
    in the input's latents at every step, while inside it follows the denoiser,
    whose prediction the guidance scales.
    """
    size = Size(SIDE, SIDE)
    image = InputImage(rgb=Image.new("RGB", (size.width, size.height), (30, 160, 60)), alpha=None)
    region = Image.new("L", (size.width, size.height), 0)
    region.paste(255, (0, 0, size.width // 2, size.height))  # repaint the left half
    outputs = []
    for scale in (1.0, 12.0):
        request = EditRequest(
            prompt="a red ball",
            negative_prompt="a blue cube",
            sources=(ImageSource("image[0]"),),
            mask=b"m",
            num_inference_steps=steps,
            guidance_scale=scale,
            true_cfg_scale=scale,
        )
        (call,) = adapter.plan(request, [image], size, [7], mask=region).calls
        assert call.kwargs["mask_image"].getpixel((2, 2)) == 255
        (raw,) = call.invoke()
        outputs.append(np.asarray(raw.convert("RGB"), dtype=int))
    difference = np.abs(outputs[0] - outputs[1]).mean(axis=2)
    margin = size.width // 8  # the VAE mixes pixels near the mask's edge
    inside, outside = difference[:, : size.width // 2 - margin], difference[:, size.width // 2 + margin :]
    assert inside.mean() > 0.05
    assert outside.mean() < inside.mean() / 4
