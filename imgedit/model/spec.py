"""The call specification: one edit with every default resolved, before it becomes pipeline arguments.

Resolution happens once, here, for every family: the request's value wins,
then the operator's (``IMGEDIT_DEFAULT_*``), then the family's. Families read
the result and never look at what the request left unset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from imgedit.edit import MAX_STEPS, EditOptions, seeds_for
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.acceleration import StepCache
from imgedit.model.call import MaskMode

#: Share of the default steps that each ``quality`` runs (at most :data:`~imgedit.edit.MAX_STEPS`).
QUALITY_STEP_SHARE = {"low": 0.25, "medium": 0.5, "high": 1.0, "auto": 1.0, "xhigh": 1.5, "max": 2.0}


@dataclass(frozen=True, kw_only=True)
class Defaults:
    """A family's defaults, or an operator's overrides of them; None means "none given".

    Attributes:
        steps: denoising steps when the request sets neither steps nor quality.
        guidance_scale, true_cfg_scale, image_guidance_scale: None leaves the pipeline's own.
        strength: img2img strength when there is no mask to inpaint.
        inpaint_strength: strength when the family inpaints the mask natively.
    """

    steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    image_guidance_scale: float | None = None
    strength: float | None = None
    inpaint_strength: float | None = None

    def overridden_by(self, overrides: Defaults) -> Defaults:
        """These defaults with every value ``overrides`` gives in its place."""
        given = {name: value for name, value in dataclasses.asdict(overrides).items() if value is not None}
        return dataclasses.replace(self, **given)


@dataclass(frozen=True, kw_only=True)
class Levers:
    """The server's speed settings for one edit: its own (``IMGEDIT_CFG_UNTIL``, ``IMGEDIT_CACHE``) or a tier's.

    Attributes:
        cfg_until: the fraction of the steps that run classifier-free guidance.
        cache: the step cache the denoiser runs with (None: whichever it has).
    """

    cfg_until: float = 1.0
    cache: StepCache | None = None


@dataclass(frozen=True, kw_only=True)
class EditSpec:
    """One edit, resolved: what a family turns into pipeline arguments.

    Attributes:
        prompt: the prompt, verbatim.
        negative_prompt: the request's, or None when it gave none.
        images: the decoded inputs, in request order.
        size: the output size, a multiple of the family's size multiple.
        steps: denoising steps.
        seeds: one per output image.
        guidance_scale: None where the family has no default (the pipeline's own applies).
        true_cfg_scale: likewise.
        image_guidance_scale: likewise.
        strength: the inpainting strength with a native mask, the img2img one otherwise; None when unused.
        mask: the edit region at the output size (white repaints) when the family
            inpaints natively; None otherwise.
        mask_mode: how the request's mask is honoured.
        levers: the server's speed settings for this edit.
    """

    prompt: str
    negative_prompt: str | None
    images: tuple[InputImage, ...]
    size: Size
    steps: int
    seeds: tuple[int, ...]
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    image_guidance_scale: float | None = None
    strength: float | None = None
    mask: Image.Image | None = None
    mask_mode: MaskMode = "none"
    levers: Levers = Levers()


def resolve(
    options: EditOptions,
    defaults: Defaults,
    images: Sequence[InputImage],
    size: Size,
    mask_region: Image.Image | None,
    *,
    native_mask: bool,
    levers: Levers,
) -> EditSpec:
    """Resolve ``options`` against ``defaults`` (the family's, with the operator's overrides).

    Args:
        images: the decoded inputs.
        size: the output size.
        mask_region: the request's edit region at the first image's size (255
            where to edit), or None without a mask.
        native_mask: whether the family inpaints a mask itself (else it is composited).
        levers: the server's speed settings for the edit.
    """
    assert defaults.steps is not None, "every family has default steps"
    if options.num_inference_steps is not None:
        steps = options.num_inference_steps
    else:
        steps = min(MAX_STEPS, max(1, round(defaults.steps * QUALITY_STEP_SHARE[options.quality])))
    mask_mode: MaskMode = "none" if mask_region is None else "native" if native_mask else "composite"
    mask = None
    if mask_region is not None and mask_mode == "native":
        mask = mask_region.resize((size.width, size.height), Image.Resampling.NEAREST)
    default_strength = defaults.inpaint_strength if mask is not None else defaults.strength
    return EditSpec(
        prompt=options.prompt,
        negative_prompt=options.negative_prompt,
        images=tuple(images),
        size=size,
        steps=steps,
        seeds=seeds_for(options.seed, options.n),
        guidance_scale=_given(options.guidance_scale, defaults.guidance_scale),
        true_cfg_scale=_given(options.true_cfg_scale, defaults.true_cfg_scale),
        image_guidance_scale=_given(options.image_guidance_scale, defaults.image_guidance_scale),
        strength=_given(options.strength, default_strength),
        mask=mask,
        mask_mode=mask_mode,
        levers=levers,
    )


def _given(value: float | None, default: float | None) -> float | None:
    return default if value is None else value
