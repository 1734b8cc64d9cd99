"""The edit a request asks of the model, as the model layer sees it: no HTTP, no pixels.

The API layer fills one :class:`EditOptions` from the wire (whichever body
format it came in); the model layer resolves it against the family's defaults
into a call specification (:class:`imgedit.model.spec.EditSpec`). Fields left
None keep the family's default.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

#: Seeds are unsigned 64-bit integers, as ``torch.Generator.manual_seed`` takes them.
MAX_SEED = 2**64 - 1
#: The most denoising steps a request may ask for, directly or through ``quality``.
MAX_STEPS = 200
#: OpenAI caps the images of one edit at 16; no model may raise it further.
HARD_MAX_IMAGES = 16

#: LoRA adapter names: letters, digits, ``.``, ``_`` and ``-``, as requests, settings and the load endpoint write them.
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: A share of the model's default steps (see :data:`imgedit.model.spec.QUALITY_STEP_SHARE`).
Quality = Literal["auto", "low", "medium", "high", "xhigh", "max"]
#: How closely the output keeps the input, where the family has a knob for it.
InputFidelity = Literal["high", "low"]


@dataclass(frozen=True, kw_only=True)
class EditOptions:
    """What the caller asked of the model; None leaves the family's default.

    Attributes:
        prompt: what to change, verbatim.
        negative_prompt: what to steer away from (families with guidance).
        n: output images; image i uses seed + i.
        seed: the first image's seed; None picks one at random.
        quality: a share of the default steps, unless ``num_inference_steps`` is set.
        input_fidelity: moves the family's knob for keeping the input (img2img strength,
            InstructPix2Pix image guidance); None keeps the family's default.
        num_inference_steps: denoising steps.
        guidance_scale: (embedded or classifier-free) guidance, by family.
        true_cfg_scale: true classifier-free guidance (Qwen, FLUX.1 Kontext).
        image_guidance_scale: how closely to follow the input (InstructPix2Pix).
        strength: how much of the image is re-noised (img2img and inpainting).
    """

    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    seed: int | None = None
    quality: Quality = "auto"
    input_fidelity: InputFidelity | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    image_guidance_scale: float | None = None
    strength: float | None = None


def seeds_for(seed: int | None, n: int) -> tuple[int, ...]:
    """Image i uses seed + i (wrapping past :data:`MAX_SEED`); a random base seed when ``seed`` is None."""
    base = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
    return tuple((base + index) % (MAX_SEED + 1) for index in range(n))


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA adapter a request asks for.

    Attributes:
        name: a loaded LoRA's name (None when only ``path`` names it).
        scale: how strongly it applies; None takes the scale it was loaded with.
        path: a file or directory under ``IMGEDIT_LORA_DIR`` to load it from first.
    """

    name: str | None
    scale: float | None = None
    path: str | None = None


#: The LoRAs a run uses, as (name, scale) pairs in the order the request named them; empty: the base model.
Loras = tuple[tuple[str, float], ...]
