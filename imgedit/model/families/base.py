"""What every model family provides: the :class:`Family` base class.

A family owns all model-specific knowledge: which diffusers pipeline classes
it serves, how many input images they take, the size multiple and what the
requested size means to them, default steps and guidance, how a resolved edit
(:class:`~imgedit.model.spec.EditSpec`) becomes pipeline arguments, whether a
mask is inpainted natively, whether its calls may be fused into one batch, and
how to turn intermediate latents into a preview picture. The request path asks
the family and never branches on a model name itself.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from PIL import Image

from imgedit.edit import EditOptions
from imgedit.errors import invalid
from imgedit.logs import get_logger
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.branches import GuidanceKind
from imgedit.model.call import EditPlan, PipelineCall, Tokens, call_parameters
from imgedit.model.encodings import EncodingCache
from imgedit.model.pipeline import Pipeline
from imgedit.model.spec import Defaults, EditSpec, Levers, resolve

log = get_logger(__name__)

#: The pipelines a family serves: :class:`~imgedit.model.pipeline.Pipeline`, or the family's own protocol over it.
P = TypeVar("P", bound=Pipeline)

#: Size of the synthetic image and output of the warm-up call.
WARMUP_SIDE = 64


def _from_pipe(class_name: str, pipeline: P) -> P:
    """The twin ``class_name`` of ``pipeline``: built from the same components, so it reads as the same family."""
    return cast(P, from_pipe(getattr(importlib.import_module("diffusers"), class_name), pipeline))


def from_pipe(pipeline_class: Any, pipeline: Pipeline) -> Pipeline:
    """``pipeline_class.from_pipe(pipeline)`` (an auto class too), sharing the components as they are.

    diffusers' ``from_pipe`` ends by casting the new pipeline, so every shared
    component, to a dtype (float32 unless told): that would turn a bfloat16
    model into float32 in place, and quantized models refuse any cast. The
    components are already placed and typed, so that cast is skipped.
    """
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline  # the real class: diffusers' lazy root hides it

    original_to = DiffusionPipeline.to
    # Replaced for the length of one call at start-up, before any request runs, and put back below.
    DiffusionPipeline.to = lambda self, *args, **kwargs: self  # type: ignore[method-assign]  # put back below
    try:
        built: Pipeline = pipeline_class.from_pipe(pipeline)
    finally:
        DiffusionPipeline.to = original_to  # type: ignore[method-assign]  # diffusers' own method again
    built.set_progress_bar_config(disable=True)
    return built


class GuidanceError(ValueError):
    """The family cannot stop guidance part-way through a call (``IMGEDIT_CFG_UNTIL`` below 1)."""


class Family(ABC, Generic[P]):
    """Maps resolved edits onto one family of diffusers pipelines.

    Args:
        pipeline: the loaded pipeline (an instance of one of ``pipeline_classes``).
        overrides: the operator's overrides of the family's defaults (``IMGEDIT_DEFAULT_*``).
        max_images: overrides ``default_max_images``, up to ``max_images_supported``.
        native_pixels: overrides the output area ``size=auto`` aims at (tiny models are built for less).
        levers: the server's speed settings for edits that name none (``IMGEDIT_CFG_UNTIL``, ``IMGEDIT_CACHE``).

    Raises:
        ValueError: ``max_images`` is more than the pipeline takes.
        GuidanceError: ``levers.cfg_until`` is below 1 and the family's guidance is not ``sequential``.
    """

    #: Family name: chosen with ``IMGEDIT_FAMILY``, shown in logs.
    name: ClassVar[str]
    #: Input images accepted per request unless the operator says otherwise.
    default_max_images: ClassVar[int] = 1
    #: The most input images the pipeline can take at all.
    max_images_supported: ClassVar[int] = 1
    #: The family's defaults (``steps`` is required); :meth:`family_defaults` may refine them per pipeline.
    defaults: ClassVar[Defaults]
    #: What ``input_fidelity`` does: defaults that replace the family's at each level (none: no knob).
    fidelity: ClassVar[dict[str, Defaults]] = {}
    #: The side of the square the model was trained at: ``size=auto`` aims at its area.
    native_side: ClassVar[int] = 1024
    #: Make all ``n`` images in one call (True) or one call per image (False).
    #: Separate calls make image i byte-identical to an ``n=1`` request with
    #: seed + i; batching changes the numerics slightly.
    batches_images: ClassVar[bool] = False
    #: Whether queued single-image calls with equal parameters may run as one
    #: batched call (lists of prompts, images and generators): the engine fuses them.
    fusable: ClassVar[bool] = False
    #: How the pipelines run classifier-free guidance: ``sequential`` (a conditional, then an unconditional
    #: denoiser call per step, which ``IMGEDIT_CFG_UNTIL`` can stop; see :mod:`imgedit.model.guidance`),
    #: ``batched`` (both branches in one call) or ``none`` (no second branch).
    guidance: ClassVar[GuidanceKind] = "none"
    #: By pipeline class name, the methods that compute encodings worth keeping (:mod:`imgedit.model.encodings`):
    #: each must depend on its arguments and the weights alone, draw nothing from a generator it is given, and
    #: belong to an encoder that no LoRA this family loads changes.
    encoders: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: The pipeline classes served, by diffusers class name: each edit pipeline
    #: with its inpainting counterpart (None when there is none). Whichever of
    #: a pair is loaded, the other is built from the same weights with
    #: ``from_pipe``; families without one composite the edit back outside the mask.
    pipeline_pairs: ClassVar[tuple[tuple[str, str | None], ...]]

    def __init__(
        self,
        pipeline: P,
        *,
        overrides: Defaults | None = None,
        max_images: int | None = None,
        native_pixels: int | None = None,
        levers: Levers | None = None,
    ) -> None:
        self.loaded = pipeline
        #: The server's speed settings, for edits that name none.
        self.levers = levers or Levers()
        self.check_levers(self.levers)
        self.max_images = max_images or self.default_max_images
        if self.max_images > self.max_images_supported:
            raise ValueError(f"{self.name} takes at most {self.max_images_supported} input images")
        #: Runs requests without a mask.
        self.pipeline: P
        #: Runs requests with a mask, when the family inpaints natively.
        self.inpaint_pipeline: P | None
        self.pipeline, self.inpaint_pipeline = self.build_pipelines(pipeline)
        #: What an edit leaves unset becomes: the operator's overrides over the family's defaults.
        self.resolved_defaults = self.family_defaults().overridden_by(overrides or Defaults())
        #: The output area ``size=auto`` aims at, at the first image's aspect ratio.
        self.native_pixels = native_pixels or self.family_native_pixels()

    def check_levers(self, levers: Levers) -> None:
        """Refuse speed settings this family cannot run.

        Raises:
            GuidanceError: ``cfg_until`` is below 1 and the pipeline's guidance is not ``sequential``.
        """
        guidance = self.guidance_of(self.loaded)
        if levers.cfg_until < 1 and guidance != "sequential":
            how = {"none": "has no classifier-free guidance", "batched": "runs its guidance in one batched call"}
            raise GuidanceError(
                f"{self.name} {how[guidance]}, so it cannot stop guidance part-way; "
                "only families that call the denoiser once per branch can"
            )

    @property
    def cfg_until(self) -> float:
        """The fraction of the steps that run guidance in edits that name none (``IMGEDIT_CFG_UNTIL``)."""
        return self.levers.cfg_until

    @classmethod
    def guidance_of(cls, pipeline: Pipeline) -> GuidanceKind:
        """How ``pipeline`` runs classifier-free guidance (by default :attr:`guidance`; a checkpoint may have none)."""
        return cls.guidance

    @classmethod
    def pipeline_classes(cls) -> tuple[str, ...]:
        """Every diffusers pipeline class name this family can be given."""
        return tuple(name for pair in cls.pipeline_pairs for name in pair if name is not None)

    def build_pipelines(self, loaded: P) -> tuple[P, P | None]:
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
    def arguments(self, pipeline: P, spec: EditSpec) -> dict[str, Any]:
        """The family's arguments for ``pipeline(...)``, before filtering by its signature.

        Args:
            pipeline: the pipeline that will run them (the loaded one, or its
                inpainting variant when ``spec.mask`` is set).
            spec: the resolved edit; ``spec.seeds`` holds the seeds of this call only.
        """

    @abstractmethod
    def preview(self, call: PipelineCall, latents: torch.Tensor) -> list[Image.Image]:
        """Decode the latents seen by a step hook of ``call`` into one picture per image."""

    # -- what a family may refine -----------------------------------------------------------

    def family_defaults(self) -> Defaults:
        """The defaults for the loaded pipeline (by default :attr:`defaults`; some depend on the checkpoint)."""
        return self.defaults

    def family_native_pixels(self) -> int:
        """The area the loaded checkpoint was trained at (by default ``native_side`` squared)."""
        return self.native_side**2

    def reference_size(self, image: InputImage, spec: EditSpec) -> Size:
        """The size the denoiser sees ``image`` at, for ``usage`` (by default the output size: it is resized to it)."""
        return spec.size

    def check(self, spec: EditSpec) -> None:
        """Refuse, with a :class:`~imgedit.errors.RequestError`, an edit this family cannot run.

        The default accepts everything; families override it for limits of their model.
        """
        return None

    def generated_size(self, pipeline: P, spec: EditSpec) -> Size:
        """The size ``pipeline`` will really generate for ``spec`` (by default, ``spec.size``)."""
        return spec.size

    def keep_encodings(self, cache: EncodingCache) -> None:
        """Have the edit and inpainting pipelines look their :attr:`encoders`' results up in ``cache`` first."""
        for pipeline in (self.pipeline, self.inpaint_pipeline):
            if pipeline is not None:
                cache.wrap(pipeline, self.encoders.get(type(pipeline).__name__, ()))

    def pipeline_of(self, call: PipelineCall) -> P:
        """This family's own pipeline that ``call`` runs: its inpainting one, or its edit one."""
        if self.inpaint_pipeline is not None and call.pipeline is self.inpaint_pipeline:
            return self.inpaint_pipeline
        return self.pipeline

    @property
    def native_mask(self) -> bool:
        """Whether a mask is inpainted by a pipeline (rather than composited afterwards)."""
        return self.inpaint_pipeline is not None

    # -- shared machinery -------------------------------------------------------------------

    def resolve(
        self,
        options: EditOptions,
        images: Sequence[InputImage],
        size: Size,
        mask_region: Image.Image | None = None,
        levers: Levers | None = None,
    ) -> EditSpec:
        """``options`` with every default resolved for this family.

        Args:
            mask_region: the request's mask at the first image's size, white
                where to edit; None without one.
            levers: a speed tier's settings (None: the server's, :attr:`levers`).
        """
        defaults = self.resolved_defaults
        if options.input_fidelity is not None:  # the request's choice wins over the operator's defaults
            defaults = defaults.overridden_by(self.fidelity.get(options.input_fidelity, Defaults()))
        return resolve(
            options, defaults, images, size, mask_region, native_mask=self.native_mask, levers=levers or self.levers
        )

    def plan(self, spec: EditSpec) -> EditPlan:
        """How to serve ``spec``: its pipeline calls, one per image unless the family batches them.

        Raises:
            RequestError: the family cannot run the edit (see :meth:`check`).
        """
        self.check(spec)
        pipeline = self.pipeline
        if spec.mask is not None:  # only a family that inpaints natively resolves one
            assert self.inpaint_pipeline is not None, "a native mask needs the inpainting pipeline"
            pipeline = self.inpaint_pipeline
        groups = [spec.seeds] if self.batches_images else [(seed,) for seed in spec.seeds]
        generated = self.generated_size(pipeline, spec)
        calls = []
        for seeds in groups:
            arguments = self.arguments(pipeline, _with_seeds(spec, seeds))
            calls.append(
                PipelineCall(
                    pipeline=pipeline,
                    kwargs=_accepted_only(pipeline, arguments),
                    num_images=len(seeds),
                    generated_size=generated,
                    cfg_until=spec.levers.cfg_until,
                    cache=spec.levers.cache,
                )
            )
        return EditPlan(calls, spec.size, spec.steps, spec.mask_mode)

    def tokens(self, spec: EditSpec) -> Tokens:
        """Token counts for one output image, as OpenAI's ``usage`` reports them.

        Text tokens are the prompt's tokens by the pipeline's tokenizer. Image
        tokens are latent patches, one per ``size_multiple`` square, of what the
        denoiser attends over: each input at the size the pipeline resizes it to
        (:meth:`reference_size`), and the output.
        """
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        try:
            text = len(tokenizer(spec.prompt).input_ids) if tokenizer is not None else len(spec.prompt.split())
        except Exception:  # a processor-style tokenizer with another call shape
            text = len(spec.prompt.split())
        image = sum(self.latent_tokens(self.reference_size(each, spec)) for each in spec.images)
        return Tokens(text_tokens=text, image_tokens=image, output_tokens=self.latent_tokens(spec.size))

    def latent_tokens(self, size: Size) -> int:
        """Latent patches of an image of ``size``: one per ``size_multiple`` square."""
        return (size.width // self.size_multiple) * (size.height // self.size_multiple)

    def warmup_plans(self, options: EditOptions | None = None, levers: Levers | None = None) -> list[EditPlan]:
        """Plans on a small blank image, run before serving: the edit, and the inpainting variant.

        Args:
            options: the edit (by default one step); a speed tier's are planned at start-up to refuse a bad tier.
            levers: the speed settings (by default the server's).

        Raises:
            RequestError: the family cannot run ``options`` (see :meth:`check`).
        """
        images = [InputImage(rgb=Image.new("RGB", (WARMUP_SIDE, WARMUP_SIDE), (127, 127, 127)), alpha=None)]
        options = options or EditOptions(prompt="warm-up", num_inference_steps=1, seed=0)
        side = max(WARMUP_SIDE, self.size_multiple)
        plans = [self.plan(self.resolve(options, images, Size(side, side), levers=levers))]
        if self.inpaint_pipeline is not None and self.inpaint_pipeline is not self.pipeline:
            region = Image.new("L", (WARMUP_SIDE, WARMUP_SIDE), 0)
            region.paste(255, (0, 0, WARMUP_SIDE // 2, WARMUP_SIDE))
            plans.append(self.plan(self.resolve(options, images, Size(side, side), region, levers)))
        return plans


def _with_seeds(spec: EditSpec, seeds: tuple[int, ...]) -> EditSpec:
    return spec if seeds == spec.seeds else dataclasses.replace(spec, seeds=seeds)


def _accepted_only(pipeline: Pipeline, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` that ``pipeline`` takes and that are set; the others are logged at debug level."""
    accepted = call_parameters(type(pipeline))
    dropped = sorted(name for name, value in arguments.items() if name not in accepted and value is not None)
    if dropped:
        log.debug("%s ignores %s", type(pipeline).__name__, ", ".join(dropped))
    return {name: value for name, value in arguments.items() if name in accepted and value is not None}


def require_a_denoising_step(steps: int, strength: float) -> None:
    """Refuse a ``strength`` that leaves a flow-matching img2img or inpainting pipeline no step to run.

    Those pipelines skip the first ``int(steps - steps * strength)`` steps of the
    schedule (their ``get_timesteps``) and fail when none is left.

    Raises:
        RequestError: naming ``strength``.
    """
    skipped = int(max(steps - min(steps * strength, steps), 0))
    if steps - skipped < 1:
        raise invalid(
            "strength",
            f"strength={strength:g} with {steps} steps leaves no denoising step; raise strength or the steps.",
        )
