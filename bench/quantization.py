"""What quantization does to the tiny models, and the GPU each real model needs per option (computed).

Measured (``--write``): for each tiny model and option (none, ``IMGEDIT_QUANTIZE=int8`` on the denoiser,
int8 on the denoiser and text encoders, a GGUF Q8_0 denoiser), the bytes of each component as loaded
(:func:`imgedit.weights.memory.parameter_bytes`), seconds per denoising step (median of the gaps between step
ends, options alternated run by run), and how far the result is from the unquantized one: the mean
difference of the pictures in levels of 255, and one minus the cosine similarity of the final latents.

Computed (``--gpu-table``): the "which GPU" table of the docs' quantization page, from the memory plan's own arithmetic
(:mod:`imgedit.weights.memory`) applied to the full-size models built on the meta device:
Qwen-Image-Edit-2511 from ``bench/configs/``, FLUX.1-Kontext-dev from the configs below (they reproduce
the published counts: transformer 11.9B, T5-XXL encoder 4.76B, CLIP-L 0.123B, VAE 0.084B), and
FLUX.2-klein from its published sizes (transformer 4B or 9B, counted as linear weights) with the
Qwen3-4B/8B text encoders built from their configs.

    python -m bench.quantization --write docs/benchmarks.md
    python -m bench.quantization --gpu-table
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import report, table
from imgedit.config import Settings
from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families import family_class_for
from imgedit.model.spec import Defaults
from imgedit.serving.options import load_options
from imgedit.weights import memory
from imgedit.weights.loader import load_model

CONFIGS = Path(__file__).resolve().parent / "configs" / "qwen-image-edit-2511"
#: Usable memory of common cards, GiB: the total less about half a GiB for the CUDA context.
CARDS = {"24 GB": 23.5, "32 GB": 31.0, "48 GB": 44.5, "80 GB": 79.0, "141 GB": 139.0}


def write_gguf(transformer: torch.nn.Module, path: Path) -> int:
    """Write ``transformer``'s weights as GGUF: Q8_0 where rows split into 32-wide blocks, float32 elsewhere.

    Returns how many tensors were quantized (tiny models have few rows that split evenly).
    """
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="imgedit-test")
    quantized = 0
    for name, tensor in transformer.state_dict().items():
        values = tensor.detach().float().numpy()
        if values.ndim == 2 and values.shape[-1] % 32 == 0:
            blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantized


def timed_edit(pipeline: Any, size: int, steps: int) -> tuple[list[float], np.ndarray, torch.Tensor]:
    """One seeded edit: the gaps between step ends (s), the picture, and the final latents."""
    family = family_class_for(pipeline)(pipeline, overrides=Defaults(steps=steps))
    image = InputImage(rgb=Image.new("RGB", (size, size), (40, 150, 220)), alpha=None)
    spec = family.resolve(EditOptions(prompt="a red roof", seed=7), [image], Size(size, size))
    (call,) = family.plan(spec).calls
    ends: list[float] = []
    latents: list[torch.Tensor] = []

    def on_step(step: int, total: int, current: torch.Tensor) -> None:
        ends.append(time.perf_counter())
        latents[:] = [current.detach().float().clone()]

    (picture,) = call.invoke(on_step=on_step)
    gaps = [later - earlier for earlier, later in itertools.pairwise(ends)]
    return gaps, np.asarray(picture.convert("RGB"), dtype=float), latents[0]


def measure(arguments: argparse.Namespace) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in arguments.models:
            built = load_model(load_options(Settings(model=model))).pipeline
            denoiser = "transformer" if hasattr(built, "transformer") else "unet"
            encoders = [name for name in built.components if name.startswith("text_encoder") and built.components[name]]
            options: dict[str, dict[str, Any]] = {
                "none": {},
                "int8": {"quantize": "int8"},
                "int8 + text encoders": {"quantize": "int8", "quantize_components": ",".join([denoiser, *encoders])},
            }
            if denoiser == "transformer":
                path = Path(scratch) / f"{model.replace(':', '-')}.gguf"
                write_gguf(built.transformer, path)
                options["GGUF Q8_0"] = {"transformer": str(path)}
            loaded = {
                name: load_model(load_options(Settings(model=model, **values))) for name, values in options.items()
            }
            gaps: dict[str, list[float]] = {name: [] for name in options}
            results = {}
            for name in options:  # warm-up
                timed_edit(loaded[name].pipeline, arguments.size, arguments.steps)
            for _ in range(arguments.runs):
                for name in options:  # alternated, so drift hits every option alike
                    run_gaps, picture, latents = timed_edit(loaded[name].pipeline, arguments.size, arguments.steps)
                    gaps[name] += run_gaps
                    results[name] = (picture, latents)
            for name in options:
                sizes = loaded[name].parameter_bytes
                picture, latents = results[name]
                cosine = torch.nn.functional.cosine_similarity(latents.flatten(), results["none"][1].flatten(), dim=0)
                rows.append(
                    (
                        model,
                        name,
                        ", ".join(f"{component} {size / 1024:.0f}" for component, size in sizes.items()),
                        f"{sizes[denoiser] / loaded['none'].parameter_bytes[denoiser]:.3f}",
                        f"{statistics.median(gaps[name]) * 1000:.1f}",
                        f"{np.abs(picture - results['none'][0]).mean():.2f}",
                        f"{1 - float(cosine):.1e}",
                    )
                )
    return (
        f"Tiny models, float32 on the CPU, one {arguments.size}x{arguments.size} edit of {arguments.steps} steps per "
        f"run, {arguments.runs} runs per option alternated; ms/step is the median gap between step ends.\n\n"
        + table(
            ("model", "option", "KiB per component", "denoiser / none", "ms/step", "picture diff", "1 - latent cosine"),
            rows,
        )
    )


#: The real models of the GPU table, in its order.
FULL_SIZE_MODELS = ("Qwen-Image-Edit-2511", "FLUX.1-Kontext-dev", "FLUX.2-klein-4B", "FLUX.2-klein-9B")


def full_size_footprints(names: Sequence[str] = FULL_SIZE_MODELS) -> dict[str, dict[str, memory.Footprint]]:
    """The ``names`` real models' components on the meta device (FLUX.2-klein's transformers from published sizes).

    Only the models asked for are built (the large ones take seconds even on the meta device).
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, Qwen3Config, Qwen3ForCausalLM, T5Config, T5EncoderModel

    qwen3 = {"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
    encoders = {
        "4B": {"hidden_size": 2560, "intermediate_size": 9728, "tie_word_embeddings": True},
        "9B": {"hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False},
    }

    @functools.cache  # one VAE serves FLUX.1 Kontext and both FLUX.2-klein sizes
    def flux_vae() -> memory.Footprint:
        with torch.device("meta"):
            return memory.footprint(
                AutoencoderKL(
                    latent_channels=16,
                    block_out_channels=(128, 256, 512, 512),
                    down_block_types=["DownEncoderBlock2D"] * 4,
                    up_block_types=["UpDecoderBlock2D"] * 4,
                    layers_per_block=2,
                )
            )

    def qwen() -> dict[str, memory.Footprint]:
        return memory.meta_footprints(
            {
                "transformer": ("diffusers", "QwenImageTransformer2DModel"),
                "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
                "vae": ("diffusers", "AutoencoderKLQwenImage"),
            },
            lambda name: json.loads((CONFIGS / f"{name}.json").read_text()),
        )

    def kontext() -> dict[str, memory.Footprint]:
        with torch.device("meta"):
            t5 = T5Config(
                d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu"
            )
            clip = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)
            built = {
                "transformer": FluxTransformer2DModel(guidance_embeds=True),
                "text_encoder_2": T5EncoderModel(t5),
                "text_encoder": CLIPTextModel(clip),
            }
        return {**{name: memory.footprint(module) for name, module in built.items()}, "vae": flux_vae()}

    def klein(size: str, params: float) -> dict[str, memory.Footprint]:
        with torch.device("meta"):
            encoder = Qwen3ForCausalLM(Qwen3Config(**encoders[size], **qwen3))
        return {
            "transformer": memory.Footprint(linear_elements=int(params)),
            "text_encoder": memory.footprint(encoder),
            "vae": flux_vae(),
        }

    builders = {
        "Qwen-Image-Edit-2511": qwen,
        "FLUX.1-Kontext-dev": kontext,
        "FLUX.2-klein-4B": lambda: klein("4B", 4.0e9),
        "FLUX.2-klein-9B": lambda: klein("9B", 9.0e9),
    }
    return {name: builders[name]() for name in names}


def gpu_table() -> str:
    """The quantization page's table: memory per option by the plan's arithmetic, and the smallest card it fits."""
    options = [
        ("bf16", memory.Placement()),
        ("int8 or fp8 transformer", memory.Placement("int8", ("transformer",))),
        ("nf4 transformer", memory.Placement("nf4", ("transformer",))),
        ("int8 or fp8 transformer and text encoder", memory.Placement("int8", ("transformer", "text_encoder"))),
        ("nf4 transformer and text encoder", memory.Placement("nf4", ("transformer", "text_encoder"))),
        ("bf16, `IMGEDIT_OFFLOAD=model`", memory.Placement(offload="model")),
        ("int8 transformer, `IMGEDIT_OFFLOAD=model`", memory.Placement("int8", ("transformer",), "model")),
        ("bf16, `IMGEDIT_OFFLOAD=group`", memory.Placement(offload="group")),
    ]
    models = full_size_footprints()
    rows = []
    for label, placement in options:
        cells = [label]
        for footprints in models.values():
            names = {"text_encoder": [name for name in footprints if name.startswith("text_encoder")]}
            components = tuple(name for part in placement.components for name in names.get(part, [part]))
            need = memory.device_need(
                footprints, torch.bfloat16, memory.Placement(placement.quantize, components, placement.offload)
            )
            card = next((card for card, usable in CARDS.items() if need.total <= usable * memory.GiB), "none")
            cells.append(f"{need.total / memory.GiB:.1f} GiB: {card}")
        rows.append(cells)
    return table(("option (computed, not measured)", *models), rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["tiny:qwen-image-edit-plus", "tiny:flux-kontext", "tiny:instruct-pix2pix"]
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gpu-table", action="store_true", help="print the docs' GPU table instead")
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    if arguments.gpu_table:
        print(gpu_table())
        return
    report(
        "quantization",
        "Quantization on the tiny models (`IMGEDIT_QUANTIZE`, GGUF)",
        measure(arguments),
        arguments.write,
    )


if __name__ == "__main__":
    main()
