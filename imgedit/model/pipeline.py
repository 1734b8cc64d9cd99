"""What imgedit asks of a diffusers pipeline, whatever its family: the :class:`Pipeline` protocol.

Every diffusers pipeline fits it. A family that reads more of its pipeline
(its VAE's configuration, its tokenizer, a latent-unpacking helper) declares a
protocol of its own on top of this one, in its module.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch


class Pipeline(Protocol):
    """A loaded diffusers pipeline: called with keyword arguments, it returns an output with ``images``.

    Attributes:
        components: every component by name (models, schedulers, tokenizers, processors).
        image_processor: turns decoded tensors into pictures (``postprocess``).
    """

    components: dict[str, Any]
    image_processor: Any

    def __call__(self, **kwargs: Any) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Pipeline: ...

    def set_progress_bar_config(self, **kwargs: Any) -> None: ...


def denoiser(pipeline: Pipeline) -> torch.nn.Module:
    """The pipeline's transformer or UNet: the model every denoising step runs.

    Raises:
        ValueError: the pipeline has neither.
    """
    model = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    if model is None:
        raise ValueError(f"{type(pipeline).__name__} has neither a transformer nor a UNet")
    return cast(torch.nn.Module, model)
