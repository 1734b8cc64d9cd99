"""bench/gpu_qwen.py at a scale a CPU runs: its configs, its FLOP count, and the whole comparison end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench import gpu_qwen
from devtools.server import ROOT

REDUCED_RUN = [
    *("--scale", "reduced", "--size", "64", "--steps", "2", "--no-compile", "--matmul-side", "256", "--warmups", "1"),
    *("--quantize", "int8"),  # fp8 needs a GPU with FP8
    "--levers",
]


def parameters(module: torch.nn.Module) -> float:
    return sum(parameter.numel() for parameter in module.parameters()) / 1e9


def test_the_full_configs_build_the_published_architecture() -> None:
    """Parameter counts of Qwen-Image-Edit-2511's components (20.43B, 8.29B, 0.127B), built on the meta device."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    configs = gpu_qwen.load_configs("full")
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**configs["transformer"])
        vae = AutoencoderKLQwenImage(**configs["vae"])
        text_encoder = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**configs["text_encoder"]))
    assert parameters(transformer) == pytest.approx(20.43, abs=0.01)
    assert parameters(text_encoder) == pytest.approx(8.29, abs=0.01)
    assert parameters(vae) == pytest.approx(0.127, abs=0.001)
    assert len(transformer.transformer_blocks) == 60


def test_reduced_scale_only_shrinks_what_it_names() -> None:
    full, reduced = gpu_qwen.load_configs("full"), gpu_qwen.load_configs("reduced")
    assert reduced["transformer"]["num_layers"] == 2
    assert reduced["transformer"]["zero_cond_t"] is True
    assert reduced["text_encoder"]["vision_config"]["patch_size"] == full["text_encoder"]["vision_config"]["patch_size"]
    assert reduced["scheduler"] == full["scheduler"]


@pytest.mark.parametrize(
    ("image_shapes", "text_tokens"),
    [([(1, 8, 8), (1, 8, 8)], 37), ([(1, 4, 4)] * 5, 100)],
    ids=["output and one reference", "output and four references"],
)
def test_the_flop_formula_matches_pytorchs_counter(image_shapes: list[tuple[int, int, int]], text_tokens: int) -> None:
    from diffusers import QwenImageTransformer2DModel

    config = gpu_qwen.load_configs("reduced")["transformer"]
    transformer = QwenImageTransformer2DModel(**config).eval()
    image_tokens = sum(frames * height * width for frames, height, width in image_shapes)
    counter = FlopCounterMode(display=False)
    # The math kernel is made of matrix multiplies the counter sees; the CPU's fused kernel is not counted.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        transformer(
            hidden_states=torch.randn(1, image_tokens, config["in_channels"]),
            encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"]),
            timestep=torch.tensor([0.5]),
            img_shapes=[image_shapes],
        )
    assert gpu_qwen.transformer_flops(config, image_tokens, text_tokens) == pytest.approx(
        counter.get_total_flops(), rel=0.01
    )


def test_a_1024_edit_with_one_1024_reference_is_about_170_tflop_per_forward() -> None:
    """The estimate in the design notes: 8,192 image tokens and a few hundred text tokens."""
    flops = gpu_qwen.transformer_flops(gpu_qwen.load_configs("full")["transformer"], 8192, 300)
    assert 160e12 < flops < 180e12


def test_the_comparison_runs_end_to_end_at_reduced_scale() -> None:
    # A fresh interpreter: a tiny Qwen model built earlier in this one shrinks the pipeline's reference size.
    completed = subprocess.run(
        [sys.executable, "-m", "bench.gpu_qwen", *REDUCED_RUN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line for line in completed.stdout.splitlines() if line.startswith(("| eager", "| fast (", "| int8"))]
    assert len(rows) == 3
    levers = [line for line in completed.stdout.splitlines() if line.startswith("| fast, ")]
    assert [line.split("|")[1].strip() for line in levers] == [
        "fast, IMGEDIT_CFG_UNTIL=0.5",
        "fast, encodings kept (a repeated edit)",
        "fast, CFG until 0.5, encodings kept",
    ]
    fast, kept = (line.rstrip(" |").rsplit("|", 1)[1] for line in (rows[1], levers[1]))
    assert kept == fast  # kept encodings: the fast path's own latents
    assert "attention=native" in rows[1]
    assert "1.00x" in rows[0]
    assert rows[0].endswith("| 1.000000 |")  # eager's latents against themselves
    cosine = float(rows[2].rstrip(" |").rsplit("|", 1)[1])
    assert 0.99 < cosine < 1.0  # int8 weights of the same random transformer: close, not equal (0.999996 here)
    # Per step: a conditional and an unconditional forward over the 4,096 tokens of the
    # 1 MP reference plus the 16 of the 64x64 output.
    assert "4112 image" in completed.stdout
