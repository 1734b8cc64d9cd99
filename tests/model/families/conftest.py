from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import EditPlan
from imgedit.model.spec import EditSpec

SIDE = 64


def spec(
    family,
    images: Sequence[InputImage],
    size: Size,
    seeds: Sequence[int] = (0,),
    mask: Image.Image | None = None,
    prompt: str = "turn it red",
    **options,
) -> EditSpec:
    """``family``'s resolved edit of ``images`` (named ``image[0]``, ``image[1]``... in errors) with ``seeds``.

    ``mask`` is the edit region at the first image's size; ``options`` are fields of
    :class:`~imgedit.edit.EditOptions`.
    """
    named = [dataclasses.replace(image, param=f"image[{index}]") for index, image in enumerate(images)]
    resolved = family.resolve(EditOptions(prompt=prompt, n=len(seeds), **options), named, size, mask)
    return dataclasses.replace(resolved, seeds=tuple(seeds))


def plan(family, images: Sequence[InputImage], size: Size, seeds: Sequence[int] = (0,), **options) -> EditPlan:
    """``family``'s plan for :func:`spec` of the same arguments."""
    return family.plan(spec(family, images, size, seeds, **options))


def assert_repaints_where_the_mask_is_white(family, steps: int = 4) -> None:
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
        (call,) = plan(
            family,
            [image],
            size,
            [7],
            mask=region,
            prompt="a red ball",
            negative_prompt="a blue cube",
            num_inference_steps=steps,
            guidance_scale=scale,
            true_cfg_scale=scale,
        ).calls
        assert call.kwargs["mask_image"].getpixel((2, 2)) == 255
        (raw,) = call.invoke()
        outputs.append(np.asarray(raw.convert("RGB"), dtype=int))
    difference = np.abs(outputs[0] - outputs[1]).mean(axis=2)
    margin = size.width // 8  # the VAE mixes pixels near the mask's edge
    inside, outside = difference[:, : size.width // 2 - margin], difference[:, size.width // 2 + margin :]
    assert inside.mean() > 0.05
    assert outside.mean() < inside.mean() / 4
