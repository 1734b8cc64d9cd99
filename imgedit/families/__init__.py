"""Model-family adapters, chosen from the loaded pipeline's class."""

from __future__ import annotations

from typing import Any

from imgedit.families.base import FamilyAdapter, PipelineCall
from imgedit.families.qwen_image_edit import QwenImageEditAdapter

ADAPTERS: tuple[type[FamilyAdapter], ...] = (QwenImageEditAdapter,)

__all__ = ["ADAPTERS", "FamilyAdapter", "PipelineCall", "UnsupportedPipeline", "adapter_class_for"]


class UnsupportedPipeline(Exception):
    """No adapter serves this pipeline class."""


def adapter_class_for(pipeline: Any) -> type[FamilyAdapter]:
    """The adapter class serving ``pipeline``, found by its class name."""
    class_name = type(pipeline).__name__
    for adapter in ADAPTERS:
        if class_name in adapter.pipeline_classes:
            return adapter
    supported = ", ".join(name for adapter in ADAPTERS for name in adapter.pipeline_classes)
    raise UnsupportedPipeline(f"no adapter serves the pipeline class {class_name}; supported: {supported}")
