"""What runs on the device: one pipeline call, and the plan of calls that serves one edit.

A :class:`PipelineCall` is a diffusers pipeline with its keyword arguments,
ready to run; an :class:`EditPlan` is the calls that make one request's images.
Families make them (:mod:`imgedit.model.families`), the engine runs them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from imgedit.media.sizing import Size
from imgedit.model.acceleration import StepCache, use_step_cache
from imgedit.model.guidance import denoiser_seam
from imgedit.model.pipeline import Pipeline

#: Called after every denoising step with the step index (from 0), the number
#: of steps the call runs, and the current latents; raising from it stops the run
#: (:class:`RunCancelled` when nobody waits for the images any more).
StepHook = Callable[[int, int, torch.Tensor], None]
#: ``native`` when the pipeline inpaints the mask itself, ``composite`` when
#: the edit is composited back onto the original outside the mask afterwards,
#: ``none`` without a mask.
MaskMode = Literal["none", "native", "composite"]


class RunCancelled(Exception):
    """The run was dropped or stopped because nobody waits for its result any more."""


@dataclass(frozen=True, kw_only=True)
class PipelineCall:
    """One ``pipeline(**kwargs)`` call, returning ``num_images`` images of ``generated_size``.

    ``generated_size`` is what the pipeline really makes; it differs from the
    request's size only for pipelines that choose their own size (the output is
    then resized to the requested one). ``cfg_until`` is the fraction of the
    steps that run classifier-free guidance (see :mod:`imgedit.model.guidance`);
    ``cache`` the step cache the denoiser runs with (None: whichever it has).
    """

    pipeline: Pipeline
    kwargs: dict[str, Any]
    num_images: int
    generated_size: Size
    cfg_until: float = 1.0
    cache: StepCache | None = None

    def invoke(self, on_step: StepHook | None = None) -> list[Image.Image]:
        """Run the call, wiring ``on_step`` into whichever step callback the pipeline has."""
        kwargs = dict(self.kwargs)
        parameters = call_parameters(type(self.pipeline))
        if self.cache is not None:
            use_step_cache(self.pipeline, self.cache)
        with denoiser_seam(self.pipeline, self.cfg_until, self._total_steps) as step_ended:
            if "callback_on_step_end" in parameters:

                def on_step_end(
                    pipeline: Pipeline, step: int, timestep: Any, tensors: dict[str, Any]
                ) -> dict[str, Any]:
                    step_ended(step)
                    if on_step is not None:
                        on_step(step, self._total_steps(), tensors["latents"])
                    return tensors

                kwargs["callback_on_step_end"] = on_step_end
            elif on_step is not None and "callback" in parameters and "callback_steps" in parameters:
                # The pre-0.22 callback style; these pipelines batch guidance into one call, which the seam leaves be.

                def legacy(step: int, timestep: Any, latents: torch.Tensor) -> None:
                    on_step(step, self._total_steps(), latents)

                kwargs["callback"] = legacy
                kwargs["callback_steps"] = 1
            with torch.inference_mode():
                return list(self.pipeline(**kwargs).images)

    def _total_steps(self) -> int:
        """Steps this call runs: the pipeline's own count once it started (strength shortens it)."""
        counted = getattr(self.pipeline, "_num_timesteps", None)
        return int(counted) if counted else int(self.kwargs.get("num_inference_steps", 1))


@dataclass(frozen=True)
class EditPlan:
    """How a family serves one request.

    Attributes:
        calls: pipeline calls that together make one image per seed, in order.
        size: the output size.
        steps: denoising steps per call.
        mask_mode: how the mask is honoured (see :data:`MaskMode`).
    """

    calls: Sequence[PipelineCall]
    size: Size
    steps: int
    mask_mode: MaskMode = "none"


@dataclass(frozen=True)
class Tokens:
    """Tokens behind one output image: the prompt's, the inputs' latent patches and vision tokens, the output's."""

    text_tokens: int
    image_tokens: int
    output_tokens: int

    def times(self, count: int) -> Tokens:
        """The tokens of ``count`` such images (each is made by its own pass over the inputs)."""
        return Tokens(self.text_tokens * count, self.image_tokens * count, self.output_tokens * count)


@functools.cache
def call_parameters(pipeline_class: type) -> frozenset[str]:
    """The keyword arguments ``pipeline_class.__call__`` takes."""
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per output image, so image i depends only on seed i.

    CPU generators make the initial noise identical on every device.
    """
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def postprocess(pipeline: Pipeline, decoded: torch.Tensor) -> list[Image.Image]:
    """Pictures from a VAE decode in [-1, 1], with the pipeline's own image processor."""
    pictures: list[Image.Image] = pipeline.image_processor.postprocess(decoded.float(), output_type="pil")
    return pictures
