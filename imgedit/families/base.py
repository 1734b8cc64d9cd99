"""What every model-family adapter provides.

An adapter owns all model-specific knowledge: which diffusers pipeline classes
it serves, how many input images they take, the size multiple, default steps
and guidance, and how the API's fields become pipeline arguments. The request
path asks the adapter and never branches on a model name itself.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from imgedit.images import InputImage
from imgedit.logs import get_logger
from imgedit.request import EditRequest, ImageSource
from imgedit.sizing import Size

log = get_logger(__name__)

#: Share of the model's default steps that each ``quality`` runs.
QUALITY_STEP_SHARE = {"low": 0.25, "medium": 0.5, "high": 1.0, "auto": 1.0}
#: Size of the synthetic image and output of the warm-up call.
WARMUP_SIDE = 64


@dataclass(frozen=True)
class PipelineCall:
    """Keyword arguments for one ``pipeline(...)`` call, returning ``num_images`` images."""

    kwargs: dict[str, Any]
    num_images: int


class FamilyAdapter(ABC):
    """Maps API requests onto one family of diffusers pipelines.

    Args:
        pipeline: the loaded pipeline (an instance of one of ``pipeline_classes``).
        default_steps: overrides the family's default step count (for distilled
            weights, or the tiny test models).
        max_images: overrides the family's default input-image cap, up to
            ``max_images_supported``.
    """

    #: Short family name, shown in logs.
    name: ClassVar[str]
    #: diffusers pipeline class names this adapter serves.
    pipeline_classes: ClassVar[tuple[str, ...]]
    #: Input images accepted per request unless the operator says otherwise.
    default_max_images: ClassVar[int]
    #: The most input images the pipeline can take at all.
    max_images_supported: ClassVar[int]
    #: Denoising steps when the request sets neither steps nor quality.
    default_steps: ClassVar[int]
    #: Make all ``n`` images in one call (True) or one call per image (False).
    #: Separate calls make image i byte-identical to an ``n=1`` request with
    #: seed + i; batching changes the numerics slightly.
    batches_images: ClassVar[bool] = False

    def __init__(self, pipeline: Any, *, default_steps: int | None = None, max_images: int | None = None) -> None:
        self.pipeline = pipeline
        self.steps = default_steps or self.default_steps
        self.max_images = max_images or self.default_max_images
        if self.max_images > self.max_images_supported:
            raise ValueError(f"{self.name} takes at most {self.max_images_supported} input images")
        self._accepted = set(inspect.signature(type(pipeline).__call__).parameters)

    @property
    @abstractmethod
    def size_multiple(self) -> int:
        """Output width and height must be multiples of this."""

    @abstractmethod
    def arguments(
        self, request: EditRequest, images: Sequence[InputImage], size: Size, steps: int, seeds: Sequence[int]
    ) -> dict[str, Any]:
        """The family's pipeline arguments for ``request`` (before filtering by signature)."""

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

    def plan(
        self, request: EditRequest, images: Sequence[InputImage], size: Size, seeds: Sequence[int]
    ) -> list[PipelineCall]:
        """The pipeline calls serving ``request``: together they make one image per seed, in order.

        Raises:
            ApiError: 400 when the family cannot run the request (see :meth:`check`).
        """
        self.check(request, images, size)
        steps = self.steps_for(request)
        groups = [list(seeds)] if self.batches_images else [[seed] for seed in seeds]
        return [
            PipelineCall(self._accepted_only(self.arguments(request, images, size, steps, group)), len(group))
            for group in groups
        ]

    def warmup_calls(self) -> list[PipelineCall]:
        """A one-step call on a small blank image, run once before serving."""
        image = Image.new("RGB", (WARMUP_SIDE, WARMUP_SIDE), (127, 127, 127))
        request = EditRequest(prompt="warm-up", sources=(ImageSource("image[0]"),), num_inference_steps=1)
        side = max(WARMUP_SIDE, self.size_multiple)
        inputs = [InputImage(rgb=image, alpha=None)]
        return self.plan(request, inputs, Size(side, side), [0])

    def _accepted_only(self, arguments: dict[str, Any]) -> dict[str, Any]:
        dropped = sorted(name for name, value in arguments.items() if name not in self._accepted and value is not None)
        if dropped:
            log.debug("%s ignores %s", type(self.pipeline).__name__, ", ".join(dropped))
        return {name: value for name, value in arguments.items() if name in self._accepted and value is not None}


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per output image, so image i depends only on seed i.

    CPU generators make the initial noise identical on every device.
    """
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
