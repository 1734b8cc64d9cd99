"""What every model-family adapter provides.

An adapter owns all model-specific knowledge: which diffusers pipeline classes
it serves, how many input images they take, the size multiple and what the
requested size means to them, default steps and guidance, how the API's fields
become pipeline arguments, whether a mask is handled natively, and how to turn
intermediate latents into a preview picture. The request path asks the adapter
and never branches on a model name itself.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from PIL import Image

from imgedit.errors import invalid
from imgedit.images import InputImage
from imgedit.logs import get_logger
from imgedit.request import EditRequest, ImageSource
from imgedit.sizing import Size

log = get_logger(__name__)

#: Share of the model's default steps that each ``quality`` runs.
QUALITY_STEP_SHARE = {"low": 0.25, "medium": 0.5, "high": 1.0, "auto": 1.0}
#: Size of the synthetic image and output of the warm-up call.
WARMUP_SIDE = 64

#: Called after every denoising step with the step index (from 0), the number
#: of steps the call runs, and the current latents; raising from it stops the run.
StepHook = Callable[[int, int, torch.Tensor], None]
MaskMode = Literal["none", "native", "composite"]
#: Arguments that may differ between calls fused into one batch; they become lists.
PER_REQUEST_ARGUMENTS = ("prompt", "negative_prompt", "image", "generator")


@dataclass(frozen=True)
class PipelineCall:
    """One ``pipeline(**kwargs)`` call, returning ``num_images`` images of ``generated_size``.

    ``generated_size`` is what the pipeline really makes; it differs from the
    request's size only for pipelines that choose their own size (the output is
    then resized to the requested one).
    """

    pipeline: Any
    kwargs: dict[str, Any]
    num_images: int
    generated_size: Size

    def invoke(self, on_step: StepHook | None = None) -> list[Image.Image]:
        """Run the call, wiring ``on_step`` into whichever step callback the pipeline has."""
        kwargs = dict(self.kwargs)
        if on_step is not None:
            parameters = _call_parameters(type(self.pipeline))
            if "callback_on_step_end" in parameters:

                def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                    on_step(step, self._total_steps(), tensors["latents"])
                    return tensors

                kwargs["callback_on_step_end"] = on_step_end
            elif "callback" in parameters and "callback_steps" in parameters:  # the pre-0.22 callback style

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
    """How an adapter serves one request.

    Attributes:
        calls: pipeline calls that together make one image per seed, in order.
        size: the output size.
        steps: denoising steps per call.
        mask_mode: ``native`` when the pipeline inpaints the mask itself,
            ``composite`` when the edit must be composited back onto the
            original outside the mask afterwards, ``none`` without a mask.
    """

    calls: list[PipelineCall]
    size: Size
    steps: int
    mask_mode: MaskMode = "none"


@dataclass(frozen=True)
class Usage:
    """Tokens behind one output image (see :meth:`FamilyAdapter.usage`)."""

    text_tokens: int
    image_tokens: int
    output_tokens: int

    def as_openai(self) -> dict[str, Any]:
        inputs = self.text_tokens + self.image_tokens
        return {
            "input_tokens": inputs,
            "input_tokens_details": {"text_tokens": self.text_tokens, "image_tokens": self.image_tokens},
            "output_tokens": self.output_tokens,
            "total_tokens": inputs + self.output_tokens,
        }


@dataclass(frozen=True)
class Defaults:
    """Operator overrides of a family's defaults (``IMGEDIT_DEFAULT_*``); None keeps the family's."""

    steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None


def _call_parameters(pipeline_class: type) -> set[str]:
    return set(inspect.signature(pipeline_class.__call__).parameters)


def _from_pipe(class_name: str, pipeline: Any) -> Any:
    built = getattr(importlib.import_module("diffusers"), class_name).from_pipe(pipeline)
    built.set_progress_bar_config(disable=True)
    return built


class FamilyAdapter(ABC):
    """Maps API requests onto one family of diffusers pipelines.

    Args:
        pipeline: the loaded pipeline (an instance of one of ``pipeline_classes``).
        defaults: operator overrides of the family's default steps and guidance.
        max_images: overrides ``default_max_images``, up to ``max_images_supported``.

    Raises:
        ValueError: ``max_images`` is more than the pipeline takes.
    """

    #: Family name: chosen with ``IMGEDIT_FAMILY``, shown in logs.
    name: ClassVar[str]
    #: Input images accepted per request unless the operator says otherwise.
    default_max_images: ClassVar[int] = 1
    #: The most input images the pipeline can take at all.
    max_images_supported: ClassVar[int] = 1
    #: Denoising steps when the request sets neither steps nor quality.
    default_steps: ClassVar[int]
    #: ``guidance_scale`` when the request sets none (None: the pipeline's own).
    default_guidance_scale: ClassVar[float | None] = None
    #: ``true_cfg_scale`` when the request sets none (None: the pipeline's own).
    default_true_cfg_scale: ClassVar[float | None] = None
    #: Make all ``n`` images in one call (True) or one call per image (False).
    #: Separate calls make image i byte-identical to an ``n=1`` request with
    #: seed + i; batching changes the numerics slightly.
    batches_images: ClassVar[bool] = False
    #: Whether queued single-image calls with equal parameters may run as one
    #: batched call (lists of prompts, images and generators); see :meth:`fusion_key`.
    fusable: ClassVar[bool] = False
    #: The pipeline classes served, by diffusers class name: each edit pipeline
    #: with its inpainting counterpart (None when there is none). Whichever of
    #: a pair is loaded, the other is built from the same weights with
    #: ``from_pipe``; families without one composite the edit back outside the mask.
    pipeline_pairs: ClassVar[tuple[tuple[str, str | None], ...]]

    def __init__(self, pipeline: Any, *, defaults: Defaults | None = None, max_images: int | None = None) -> None:
        defaults = defaults or Defaults()
        self.steps = defaults.steps or self.default_steps
        self.guidance_scale = (
            defaults.guidance_scale if defaults.guidance_scale is not None else self.default_guidance_scale
        )
        self.true_cfg_scale = (
            defaults.true_cfg_scale if defaults.true_cfg_scale is not None else self.default_true_cfg_scale
        )
        self.max_images = max_images or self.default_max_images
        if self.max_images > self.max_images_supported:
            raise ValueError(f"{self.name} takes at most {self.max_images_supported} input images")
        self.loaded = pipeline
        #: Runs requests without a mask.
        self.pipeline: Any
        #: Runs requests with a mask, when the family inpaints natively.
        self.inpaint_pipeline: Any | None
        self.pipeline, self.inpaint_pipeline = self.build_pipelines(pipeline)

    @classmethod
    def pipeline_classes(cls) -> tuple[str, ...]:
        """Every diffusers pipeline class name this adapter can be given."""
        return tuple(name for pair in cls.pipeline_pairs for name in pair if name is not None)

    def build_pipelines(self, loaded: Any) -> tuple[Any, Any | None]:
        """The edit pipeline and the inpainting one (or None), one of them ``loaded``.

        The other is built with ``from_pipe``: it shares every component, so it costs no memory.
        """
        names = [cls.__name__ for cls in type(loaded).__mro__]
        for edit, inpaint in self.pipeline_pairs:
            if edit in names:
                return loaded, _from_pipe(inpaint, loaded) if inpaint else None
            if inpaint in names:
                return _from_pipe(edit, loaded), loaded
        # A pipeline of another class whose family was forced: use it as it is.
        return loaded, None

    # -- what a family must say -------------------------------------------------------------

    @property
    @abstractmethod
    def size_multiple(self) -> int:
        """Output width and height must be multiples of this."""

    @abstractmethod
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
        """The family's arguments for ``pipeline(...)``, before filtering by its signature.

        Args:
            pipeline: the pipeline that will run them (the loaded one, or its
                inpainting variant when ``mask`` is given).
            request: the validated request.
            images: the decoded input images, in request order.
            size: the output size (a multiple of :attr:`size_multiple`).
            steps: denoising steps.
            seeds: one seed per image this call makes.
            mask: for native inpainting, the mask at the output size, white
                where to repaint; None otherwise.
        """

    @abstractmethod
    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        """Decode the latents seen by a step hook of ``call`` into one picture per image."""

    # -- what a family may refine -----------------------------------------------------------

    def check(self, request: EditRequest, images: Sequence[InputImage], size: Size) -> None:
        """Refuse, with an :class:`~imgedit.errors.ApiError`, a request this family cannot run.

        The default accepts everything; families override it for limits of their model.
        """
        return None

    def steps_for(self, request: EditRequest) -> int:
        """Explicit ``num_inference_steps`` wins; otherwise ``quality`` scales the default."""
        if request.num_inference_steps is not None:
            return request.num_inference_steps
        return max(1, round(self.steps * QUALITY_STEP_SHARE[request.quality]))

    def usage(self, request: EditRequest, images: Sequence[InputImage], size: Size) -> Usage:
        """Token counts for one output image, as OpenAI's ``usage`` reports them.

        Text tokens are the prompt's tokens by the pipeline's tokenizer; image
        tokens are latent patches, one per ``size_multiple`` square: what the
        denoiser attends over, input references and the output alike.
        """
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        try:
            text = len(tokenizer(request.prompt).input_ids) if tokenizer is not None else len(request.prompt.split())
        except Exception:  # a processor-style tokenizer with another call shape
            text = len(request.prompt.split())
        patch = self.size_multiple
        image = sum((each.size.width // patch) * (each.size.height // patch) for each in images)
        return Usage(text_tokens=text, image_tokens=image, output_tokens=(size.width // patch) * (size.height // patch))

    def generated_size(self, pipeline: Any, images: Sequence[InputImage], size: Size) -> Size:
        """The size ``pipeline`` will really generate when asked for ``size`` (by default, ``size``)."""
        return size

    @property
    def native_mask(self) -> bool:
        """Whether a mask is inpainted by a pipeline (rather than composited afterwards)."""
        return self.inpaint_pipeline is not None

    # -- shared machinery -------------------------------------------------------------------

    def plan(
        self,
        request: EditRequest,
        images: Sequence[InputImage],
        size: Size,
        seeds: Sequence[int],
        mask: Image.Image | None = None,
    ) -> EditPlan:
        """How to serve ``request``.

        Args:
            mask: the request's mask at the first image's size, white where to
                edit; None without one.

        Raises:
            ApiError: 400 when the family cannot run the request (see :meth:`check`).
        """
        self.check(request, images, size)
        steps = self.steps_for(request)
        mask_mode: MaskMode = "none" if mask is None else "native" if self.native_mask else "composite"
        pipeline = self.inpaint_pipeline if mask_mode == "native" else self.pipeline
        call_mask = mask.resize((size.width, size.height), Image.Resampling.NEAREST) if mask_mode == "native" else None
        groups = [list(seeds)] if self.batches_images else [[seed] for seed in seeds]
        generated = self.generated_size(pipeline, images, size)
        calls = [
            PipelineCall(
                pipeline,
                self._accepted_only(pipeline, self.arguments(pipeline, request, images, size, steps, group, call_mask)),
                len(group),
                generated,
            )
            for group in groups
        ]
        return EditPlan(calls, size, steps, mask_mode)

    def warmup_plans(self) -> list[EditPlan]:
        """One-step plans on a small blank image, run before serving: the edit, and the inpainting variant."""
        image = Image.new("RGB", (WARMUP_SIDE, WARMUP_SIDE), (127, 127, 127))
        request = EditRequest(prompt="warm-up", sources=(ImageSource("image[0]"),), num_inference_steps=1)
        side = max(WARMUP_SIDE, self.size_multiple)
        inputs = [InputImage(rgb=image, alpha=None)]
        plans = [self.plan(request, inputs, Size(side, side), [0])]
        if self.inpaint_pipeline is not None and self.inpaint_pipeline is not self.pipeline:
            mask = Image.new("L", image.size, 0)
            mask.paste(255, (0, 0, WARMUP_SIDE // 2, WARMUP_SIDE))
            plans.append(self.plan(request, inputs, Size(side, side), [0], mask))
        return plans

    def fusion_key(self, call: PipelineCall) -> Hashable | None:
        """Calls with equal keys can run as one batch; None when ``call`` cannot be batched.

        Only single-image calls of a fusable family fuse, and only when every
        argument but the per-request ones (:data:`PER_REQUEST_ARGUMENTS`) is
        equal; images must have the same size.
        """
        if not self.fusable or call.num_images != 1:
            return None
        parts: list[tuple[str, Hashable]] = []
        for name, value in sorted(call.kwargs.items()):
            if name == "image":
                if not isinstance(value, Image.Image):
                    return None
                parts.append((name, value.size))
            elif name in PER_REQUEST_ARGUMENTS:
                parts.append((name, "given"))
            elif isinstance(value, str | int | float | bool | tuple):
                parts.append((name, value))
            else:  # a mask or a tensor: too costly to compare, so never fused
                return None
        return (id(call.pipeline), call.generated_size, tuple(parts))

    def fuse(self, calls: list[PipelineCall]) -> PipelineCall:
        """One batched call making the images of ``calls`` (which share a :meth:`fusion_key`), in order."""
        first = calls[0]
        kwargs = dict(first.kwargs)
        for name in PER_REQUEST_ARGUMENTS:
            if name in kwargs:
                values = [call.kwargs[name] for call in calls]
                # Each call has one generator list of one; the batch wants one list.
                kwargs[name] = [item for value in values for item in value] if name == "generator" else values
        return PipelineCall(first.pipeline, kwargs, len(calls), first.generated_size)

    def _accepted_only(self, pipeline: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        accepted = _call_parameters(type(pipeline))
        dropped = sorted(name for name, value in arguments.items() if name not in accepted and value is not None)
        if dropped:
            log.debug("%s ignores %s", type(pipeline).__name__, ", ".join(dropped))
        return {name: value for name, value in arguments.items() if name in accepted and value is not None}


def require_a_denoising_step(steps: int, strength: float) -> None:
    """Refuse a ``strength`` that leaves a flow-matching img2img or inpainting pipeline no step to run.

    Those pipelines skip the first ``int(steps - steps * strength)`` steps of the
    schedule (their ``get_timesteps``) and fail when none is left.

    Raises:
        ApiError: 400 naming ``strength``.
    """
    skipped = int(max(steps - min(steps * strength, steps), 0))
    if steps - skipped < 1:
        raise invalid(
            "strength",
            f"strength={strength:g} with {steps} steps leaves no denoising step; raise strength or the steps.",
        )


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per output image, so image i depends only on seed i.

    CPU generators make the initial noise identical on every device.
    """
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def postprocess(pipeline: Any, decoded: torch.Tensor) -> list[Image.Image]:
    """Pictures from a VAE decode in [-1, 1], with the pipeline's own image processor."""
    return pipeline.image_processor.postprocess(decoded.float(), output_type="pil")
