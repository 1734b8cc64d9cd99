"""What the serving layer tells the loader: where the model is, how to place it, how to quantize it.

Each field is the ``IMGEDIT_`` setting named beside it; the loader and the
weights plan read these and never the server's settings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from imgedit.ranks.plans import RankLayout

#: ``IMGEDIT_QUANTIZE``'s values, and the conversions among them, cheapest for a user first.
Method = Literal["none", "int8", "fp8", "nf4"]
CONVERSIONS: tuple[Method, ...] = ("fp8", "int8", "nf4")


@dataclass(frozen=True)
class QuantizationOptions:
    """``IMGEDIT_QUANTIZE`` (``method``), ``IMGEDIT_QUANTIZE_COMPONENTS`` (empty: the denoiser) and
    ``IMGEDIT_TRANSFORMER`` (a single file replacing the denoiser)."""

    method: Method = "none"
    components: tuple[str, ...] = ()
    transformer: str | None = None


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How to load the model.

    Attributes:
        model: ``IMGEDIT_MODEL``: a hub id, a directory, ``bentoml:NAME`` or ``tiny:NAME``.
        revision: ``IMGEDIT_MODEL_REVISION``.
        device: ``IMGEDIT_DEVICE`` (``auto``, ``cuda``, ``cpu``).
        dtype: ``IMGEDIT_DTYPE``.
        device_map: ``IMGEDIT_DEVICE_MAP``.
        offload: ``IMGEDIT_OFFLOAD``.
        quantization: the weights' quantization.
        memory_check: ``IMGEDIT_MEMORY_CHECK``.
        memory_budget_gib: ``IMGEDIT_MEMORY_BUDGET_GIB``.
        loras: ``IMGEDIT_LORA``: LoRAs every run uses.
        fuse_loras: ``IMGEDIT_LORA_FUSE``.
        chosen_loras: whether ``IMGEDIT_LORA_ADAPTERS`` names LoRAs requests choose (they must work on the weights).
        ranks: how each edit is split over ranks (tensor parallelism shards the weights as they load).
    """

    model: str
    revision: str | None = None
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device_map: Literal["none", "balanced"] = "none"
    offload: Literal["none", "model", "sequential", "group"] = "none"
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    memory_check: bool = True
    memory_budget_gib: float | None = None
    loras: str | None = None
    fuse_loras: bool = False
    chosen_loras: bool = False
    ranks: RankLayout = field(default_factory=RankLayout)
