"""Random LoRA files for the tiny models, written the way trainers publish them (peft + ``save_lora_weights``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict

#: The attention projections every tiny denoiser has.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def write_lora(pipeline: Any, directory: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA for ``pipeline``'s transformer (or UNet) with random weights, as a directory.

    Random on both sides (peft starts one side at zero, which would change nothing), so
    an image made with it differs from one made without.
    """
    denoiser_name = "transformer" if getattr(pipeline, "transformer", None) is not None else "unet"
    denoiser = copy.deepcopy(getattr(pipeline, denoiser_name))
    torch.manual_seed(seed)
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False))
    layers = get_peft_model_state_dict(denoiser)
    directory.mkdir(parents=True, exist_ok=True)
    type(pipeline).save_lora_weights(str(directory), **{f"{denoiser_name}_lora_layers": layers})
    return directory
