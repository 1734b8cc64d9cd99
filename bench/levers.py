"""Fewer model calls per edit: each lever counted on the tiny Qwen, and the compute it implies at full size, computed.

On the tiny Qwen-Image-Edit-2511 model (real pipeline classes, random
weights), for each recipe: the denoiser's forward calls and the encoders' calls
(the vision-language text encoder, the VAE encoder) per edit, CPU time against
the baseline (recipes interleaved, rotating, in one run), and how far the
picture is from the baseline's. The encoding cache is measured on a repeated
edit (the same picture and prompt, as a retry or a new seed sends).

Then, computed without weights: the FLOPs of one forward call of the real
Qwen-Image-Edit-2511 transformer (its configuration in ``bench/configs``) at
1024x1024 with one 1024x1024 reference, counted by PyTorch's
``FlopCounterMode`` on the meta device, times the calls of each recipe.

    python -m bench.levers --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import PROMPT, SEED, median, photo_like, report, table
from bench.gpu_qwen import build_transformer, load_configs
from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.acceleration import AccelerationOptions, apply_options
from imgedit.model.encodings import EncodingCache
from imgedit.model.events import denoiser_call
from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
from imgedit.model.guidance import guided_steps
from imgedit.model.pipeline import denoiser
from imgedit.model.spec import Defaults, Levers
from imgedit.model.tiny import build_tiny

#: NVIDIA H200 SXM, dense BF16 Tensor Core throughput (the datasheet's 1,979 TFLOPS is with 2:4 sparsity).
H200_BF16_TFLOPS = 989.0
#: Text tokens the transformer attends to at full size: Qwen's prompt template, a short prompt and the vision
#: tokens of one reference at the encoder's 384x384 (about 190), rounded.
TEXT_TOKENS = 256


@dataclass(frozen=True)
class Recipe:
    name: str
    cfg_until: float = 1.0
    cache: str = "none"
    encodings: bool = False


RECIPES = (
    Recipe("baseline (true CFG every step)"),
    Recipe("`IMGEDIT_CFG_UNTIL=0.5`", cfg_until=0.5),
    Recipe("`IMGEDIT_CFG_UNTIL=0.25`", cfg_until=0.25),
    Recipe("`IMGEDIT_ENCODING_CACHE_MB`, repeated edit", encodings=True),
    Recipe("`IMGEDIT_CACHE=first_block`", cache="first_block"),
    Recipe("CFG until 0.5 + encodings", cfg_until=0.5, encodings=True),
    Recipe("CFG until 0.5 + encodings + first_block", cfg_until=0.5, cache="first_block", encodings=True),
)


class Counted:
    """Counts the denoiser's, the text encoder's and the VAE encoder's calls of one pipeline."""

    def __init__(self, pipeline: Any) -> None:
        self.denoiser = self.text = self.vae = 0
        pipeline.text_encoder.register_forward_pre_hook(lambda *_: self._add("text"))
        encode = pipeline.vae.encode

        def counted_encode(*args: Any, **kwargs: Any) -> Any:
            self._add("vae")
            return encode(*args, **kwargs)

        pipeline.vae.encode = counted_encode

    def _add(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def reset(self) -> None:
        self.denoiser = self.text = self.vae = 0


def tiny_edit(recipe: Recipe, steps: int, size: int) -> tuple[Callable[[], np.ndarray], Counted]:
    """One recipe's edit on a tiny Qwen of its own (levers install hooks that stay), and its counters."""
    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    if recipe.cache != "none":
        apply_options(pipeline, AccelerationOptions(cache=recipe.cache), denoiser(pipeline).device)  # type: ignore[arg-type]
    family = QwenImageEditPlusFamily(
        pipeline, overrides=Defaults(steps=steps), levers=Levers(cfg_until=recipe.cfg_until)
    )
    if recipe.encodings:
        family.keep_encodings(EncodingCache(256 * 2**20))
    counted = Counted(pipeline)
    image = InputImage(rgb=photo_like(size, size), alpha=None)
    options = EditOptions(prompt=PROMPT, seed=SEED, num_inference_steps=steps)
    (call,) = family.plan(family.resolve(options, [image], Size(size, size))).calls

    def run() -> np.ndarray:
        (picture,) = call.invoke()
        return np.asarray(picture.convert("RGB"), dtype=np.int16)

    return run, counted


def measure(steps: int, size: int, runs: int) -> list[tuple[object, ...]]:
    edits = {recipe: tiny_edit(recipe, steps, size) for recipe in RECIPES}
    timings: dict[Recipe, list[float]] = {recipe: [] for recipe in RECIPES}
    pictures: dict[Recipe, np.ndarray] = {}
    calls: dict[Recipe, tuple[int, int, int]] = {}
    current = [0]
    denoiser_call.observe(lambda: edits[RECIPES[current[0]]][1]._add("denoiser"))
    try:
        for round_ in range(runs + 1):  # round 0 warms up (and fills the encoding caches: later edits repeat it)
            shift = round_ % len(RECIPES)
            for index in [*range(shift, len(RECIPES)), *range(shift)]:
                recipe = RECIPES[index]
                run, counted = edits[recipe]
                current[0] = index
                counted.reset()
                started = time.process_time()
                pictures[recipe] = run()
                if round_:
                    timings[recipe].append(time.process_time() - started)
                calls[recipe] = (counted.denoiser, counted.text, counted.vae)
    finally:
        denoiser_call.observe(None)
    base = RECIPES[0]
    rows: list[tuple[object, ...]] = []
    for recipe in RECIPES:
        difference = np.abs(pictures[recipe] - pictures[base])
        denoiser_calls, text_calls, vae_calls = calls[recipe]
        rows.append(
            (
                recipe.name,
                denoiser_calls,
                text_calls,
                vae_calls,
                f"{median(timings[recipe]) * 1000:.0f}",
                f"{median(timings[recipe]) / median(timings[base]):.2f}",
                f"{difference.mean():.2f} / {difference.max()}",
            )
        )
    return rows


def flops_per_denoiser_call(side: int) -> float:
    """FLOPs of one Qwen-Image-Edit-2511 transformer forward: a ``side`` square output and one such reference."""
    configs = load_configs("full")
    config = configs["transformer"]
    model = build_transformer(configs, torch.device("meta"), torch.bfloat16)
    latent_side = side // 16  # the VAE's 8x, then 2x2 packing
    tokens = latent_side * latent_side
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(
            hidden_states=torch.empty(1, 2 * tokens, config["in_channels"], device="meta", dtype=torch.bfloat16),
            timestep=torch.full((1,), 0.5, device="meta", dtype=torch.bfloat16),
            encoder_hidden_states=torch.empty(
                1, TEXT_TOKENS, config["joint_attention_dim"], device="meta", dtype=torch.bfloat16
            ),
            encoder_hidden_states_mask=torch.ones(1, TEXT_TOKENS, device="meta", dtype=torch.bool),
            img_shapes=[[(1, latent_side, latent_side), (1, latent_side, latent_side)]],
            return_dict=False,
        )
    return float(counter.get_total_flops())


def computed(side: int, steps: int) -> tuple[float, list[tuple[object, ...]]]:
    per_call = flops_per_denoiser_call(side)
    recipes = [
        (f"{steps} steps, true CFG every step", steps * 2),
        *(
            (f"{steps} steps, `IMGEDIT_CFG_UNTIL={fraction:g}`", guided_steps(fraction, steps) + steps)
            for fraction in (0.75, 0.5, 0.25)
        ),
        ("8 steps, no CFG (a Lightning LoRA's 8-step recipe)", 8),
        ("4 steps, no CFG (a Lightning LoRA's 4-step recipe)", 4),
    ]
    baseline = recipes[0][1]
    rows: list[tuple[object, ...]] = []
    for name, calls in recipes:
        tflop = per_call * calls / 1e12
        rows.append((name, calls, f"{tflop:,.0f}", f"{tflop / H200_BF16_TFLOPS:.1f}", f"{calls / baseline:.2f}"))
    return per_call, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps of each tiny edit")
    parser.add_argument("--size", type=int, default=64, help="side of the tiny edits")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--full-side", type=int, default=1024, help="side of the computed full-size edit")
    parser.add_argument("--full-steps", type=int, default=40)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    measured = measure(arguments.steps, arguments.size, arguments.runs)
    per_call, full = computed(arguments.full_side, arguments.full_steps)
    side = arguments.full_side
    body = (
        f"Measured: the tiny Qwen-Image-Edit-2511, {arguments.size}x{arguments.size}, {arguments.steps} steps, "
        f"true CFG (scale 4), median CPU time of {arguments.runs} rotating rounds; the picture's mean / largest "
        "difference to the baseline's, in levels of 255. `first_block` still calls the denoiser at every step and "
        "skips its later blocks inside when the first block's output barely changed: its saving shows in time "
        "only.\n\n"
        + table(
            (
                "recipe",
                "denoiser calls",
                "text encoder calls",
                "VAE encoder calls",
                "CPU ms",
                "of baseline",
                "diff",
            ),
            measured,
        )
        + f"\n\nComputed, not measured: one forward call of the real Qwen-Image-Edit-2511 transformer at {side}x{side} "
        f"with one {side}x{side} reference and {TEXT_TOKENS} text tokens is {per_call / 1e12:.1f} TFLOP "
        "(PyTorch's FlopCounterMode on the meta device). Seconds are TFLOP / "
        f"{H200_BF16_TFLOPS:g} TFLOPS, an H200's dense BF16 peak (NVIDIA's datasheet): a floor that real runs "
        "reach a fraction of. Encoders and the VAE decode are left out.\n\n"
        + table(("recipe", "denoiser calls", "TFLOP per edit", "s at H200 peak", "of baseline"), full)
    )
    report("levers", "Levers: fewer model calls per edit", body, arguments.write)


if __name__ == "__main__":
    main()
