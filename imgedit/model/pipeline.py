"""What imgedit asks of a diffusers pipeline, whatever its family: the :class:`Pipeline` protocol.

Every diffusers pipeline fits it. A family that reads more of its pipeline
(its VAE's configuration, its tokenizer, a latent-unpacking helper) declares a
protocol of its own on top of this one, in its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:  # diffusers is imported where a model is loaded, not wherever this module is
    from diffusers.models.modeling_utils import ModelMixin


class Pipeline(Protocol):
    """A loaded diffusers pipeline: called with keyword arguments, it returns an output with ``images``.

    Attributes:
        image_processor: turns decoded tensors into pictures (``postprocess``).
    """

    image_processor: Any

    @property
    def components(self) -> dict[str, Any]:
        """Every component by name: models, schedulers, tokenizers, processors."""
        ...

    # (*args, **kwargs) stands for whatever each pipeline declares.
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Pipeline: ...

    def set_progress_bar_config(self, *args: Any, **kwargs: Any) -> None: ...

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None: ...

    def enable_model_cpu_offload(self, *args: Any, **kwargs: Any) -> None: ...

    def enable_sequential_cpu_offload(self, *args: Any, **kwargs: Any) -> None: ...

    def enable_group_offload(self, *args: Any, **kwargs: Any) -> None: ...


def denoiser(pipeline: Pipeline) -> ModelMixin:
    """The pipeline's transformer or UNet: the model every denoising step runs.

    Raises:
        ValueError: the pipeline has neither.
    """
    model = getattr(pipeline, "transformer", None) or getattr(pipeline, "unet", None)
    if model is None:
        raise ValueError(f"{type(pipeline).__name__} has neither a transformer nor a UNet")
    return cast("ModelMixin", model)
