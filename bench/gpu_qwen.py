"""Qwen-Image-Edit-2511 at full size, random bf16 weights: plain diffusers eager against imgedit's fast path.

No weights are needed: the real architecture is built from the configs in
``bench/configs/qwen-image-edit-2511/`` (transformer, VAE, Qwen2.5-VL-7B text
encoder, scheduler and image processor as published with the model) and
initialised at random directly on the device in the run's dtype. Speed and
memory do not depend on the weights' values; only the images are noise.

One edit: a ``--size`` square output from one ``--size`` square reference
(the pipeline resizes references to about 1 MP whatever the output size),
true CFG (``true_cfg_scale`` 4 with the negative prompt ``" "``, as the model
card runs it), ``--steps`` steps. Two variants run in one process, eager first
because compilation cannot be undone:

* ``eager``: the pipeline as diffusers builds it, PyTorch's default SDPA
  attention: what the peers run;
* ``fast``: imgedit's configured fast path, applied by the server's own code
  (:func:`imgedit.model.acceleration.apply_options`): the fastest attention backend
  that works here, picked by timing each candidate at this model's attention
  shape, and regional compilation of the transformer blocks.

``--levers`` adds the fast path with ``IMGEDIT_CFG_UNTIL=0.5``
(:mod:`imgedit.model.guidance`), with the encodings kept
(:mod:`imgedit.model.encodings`; the warm-up edit encodes the same picture and
prompts, so the timed edit finds them), and with both.

``--quantize fp8 int8`` adds one variant per method after those: the transformer
rebuilt with the same random weights (same seed), converted in place with the
torchao configuration ``IMGEDIT_QUANTIZE`` gives diffusers
(:func:`imgedit.weights.quantization.torchao_config`), run eager like ``eager``;
every row gives the cosine similarity of its final latents to ``eager``'s
(the fast path's too: its attention kernel may round differently).

Per variant: seconds per denoising step (median of the gaps between step
ends, timed after a warm-up edit), the whole call, peak device memory, and the
share of the bf16 floor: the transformer's FLOPs per step, counted from its
configuration and the sequence lengths it actually saw
(:func:`transformer_flops`, checked against PyTorch's FLOP counter in
``tests/test_bench_gpu_qwen.py``), divided by the rate of a large matrix
multiply measured on the same device.

The byte-level tokenizer of the tiny models stands in for Qwen's BPE one (the
text encoder's special-token ids are set to its ids), so prompts come out
longer in tokens than with the real tokenizer: a few hundred text tokens
against about 8,200 image tokens, under 5 % of a step.

    python -m bench.gpu_qwen --steps 40 --write docs/benchmarks.md

``--scale reduced`` builds the same pipeline a few layers deep and narrow, to
run on a CPU; the test suite runs it that way.

It needs this repository, torch, transformers, diffusers and pydantic-settings
(not BentoML). On a GPU machine without network, fetch the wheels elsewhere
(``pip download diffusers==0.42.1 pydantic-settings -d wheels``) and install
them there with ``pip install --no-index --find-links wheels diffusers pydantic-settings``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.common import photo_like, report, table
from imgedit.model.acceleration import CUDA_ATTENTION_BACKENDS, AccelerationOptions, apply_options
from imgedit.model.encodings import EncodingCache
from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
from imgedit.model.guidance import denoiser_seam

CONFIGS = Path(__file__).resolve().parent / "configs" / "qwen-image-edit-2511"
PROMPT = "Replace the sky with a sunset and add a red kite flying above the house"
#: Overrides that make ``--scale reduced``: every component a few layers deep and narrow.
REDUCED: dict[str, dict[str, Any]] = {
    "transformer": {
        "num_layers": 2,
        "attention_head_dim": 32,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "axes_dims_rope": [8, 12, 12],
    },
    "vae": {"base_dim": 8, "num_res_blocks": 1},
    "text_encoder": {
        "hidden_size": 32,
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [2, 3, 3]},
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [1],
        },
    },
}
#: Attention backends worth trying, fastest first where each is available.
ATTENTION_CANDIDATES = ("_flash_3", "flash", "_native_cudnn", "_native_flash", "_native_efficient", "native")


def load_configs(scale: str) -> dict[str, dict[str, Any]]:
    """The component configs, with ``REDUCED`` applied for ``scale="reduced"``; keys starting ``_`` dropped."""
    configs = {}
    for path in sorted(CONFIGS.glob("*.json")):
        config = {key: value for key, value in json.loads(path.read_text()).items() if not key.startswith("_")}
        if scale == "reduced":
            config = _merged(config, REDUCED.get(path.stem, {}))
        configs[path.stem] = config
    return configs


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


def build_pipeline(configs: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype) -> Any:
    """A ``QwenImageEditPlusPipeline`` with random weights created on ``device`` in ``dtype`` (never on the host)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from imgedit.model.tiny.qwen import ImageOnlyQwen2VLProcessor
    from imgedit.model.tiny.tokenizers import qwen_tokenizer

    tokenizer = qwen_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    text_config = Qwen2_5_VLConfig(
        **configs["text_encoder"],
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    text_config.text_config.bos_token_id = token_id("<|endoftext|>")
    text_config.text_config.eos_token_id = token_id("<|endoftext|>")
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = build_transformer(configs, device, dtype)
            vae = AutoencoderKLQwenImage(**configs["vae"])
            text_encoder = Qwen2_5_VLForConditionalGeneration._from_config(text_config, dtype=dtype)
    finally:
        torch.set_default_dtype(default_dtype)
    return QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        processor=ImageOnlyQwen2VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(**configs["processor"]), tokenizer=tokenizer
        ),
        transformer=transformer.eval(),
    )


def build_transformer(configs: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype) -> Any:
    """The transformer with random weights from a fixed seed, made on ``device`` in ``dtype``: equal on every build."""
    from diffusers import QwenImageTransformer2DModel

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    try:
        with torch.device(device):
            return QwenImageTransformer2DModel(**configs["transformer"]).eval()
    finally:
        torch.set_default_dtype(default_dtype)


def quantized_transformer(
    configs: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype, method: str
) -> Any:
    """:func:`build_transformer`, its linear weights converted by ``IMGEDIT_QUANTIZE=method``'s torchao config."""
    from torchao.quantization import quantize_

    from imgedit.weights.quantization import torchao_config

    transformer = build_transformer(configs, device, dtype)
    quantize_(transformer, torchao_config(method))  # every nn.Linear, as diffusers' quantizer converts them
    return transformer


def transformer_flops(config: dict[str, Any], image_tokens: int, text_tokens: int) -> float:
    """Floating-point operations (a multiply-add counts 2) of one ``QwenImageTransformer2DModel`` forward, batch 1.

    Args:
        config: the transformer's config.
        image_tokens: length of ``hidden_states`` (output latents and references, packed 2x2).
        text_tokens: length of ``encoder_hidden_states``.

    Per block and token, each stream has q, k, v and output projections (4 d^2
    multiply-adds) and a 4x MLP (8 d^2); joint attention over all L tokens adds
    2 L^2 d for the scores and 2 L^2 d for the weighted sum. The per-sample
    terms (timestep embedding, modulation, with ``zero_cond_t`` for two
    timesteps) are tiny but counted, so the total matches PyTorch's counter.
    """
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = image_tokens + text_tokens
    timesteps = 2 if config.get("zero_cond_t") else 1
    per_block = 2 * 12 * width * width * tokens + 4 * tokens * tokens * width
    per_block += 2 * width * 6 * width * (timesteps + 1)  # image modulation for each timestep, text for one
    embed = 2 * image_tokens * config["in_channels"] * width + 2 * text_tokens * config["joint_attention_dim"] * width
    timestep = 2 * timesteps * (256 * width + width * width)
    out = 2 * width * 2 * width + 2 * image_tokens * width * config["patch_size"] ** 2 * config["out_channels"]
    return float(config["num_layers"] * per_block + embed + timestep + out)


def matmul_rate(device: torch.device, dtype: torch.dtype, side: int, repeats: int = 20) -> float:
    """FLOP/s of a ``side`` square matrix multiply on ``device``: the median of ``repeats`` after warm-up."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    timings = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        a @ b
        _synchronize(device)
        timings.append(time.perf_counter() - started)
    return 2 * side**3 / statistics.median(timings)


def fastest_attention(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, tokens: int) -> str:
    """The attention backend that runs this shape fastest here, of those in ``ATTENTION_CANDIDATES`` that work."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    query, key, value = (torch.randn(1, tokens, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
    timings = {}
    for name in ATTENTION_CANDIDATES:
        if name in CUDA_ATTENTION_BACKENDS and device.type != "cuda":
            continue
        try:
            run = lambda name=name: dispatch_attention_fn(query, key, value, backend=AttentionBackendName(name))  # noqa: E731
            run()
        except Exception as error:  # a kernel package missing, or the GPU too old for it
            print(f"attention {name}: not usable here ({type(error).__name__}: {error})", flush=True)
            continue
        timings[name] = _median_seconds(run, device, repeats=10)
        print(f"attention {name}: {timings[name] * 1000:.2f} ms", flush=True)
    return min(timings, key=lambda name: timings[name])


@dataclass
class EditTiming:
    """What one timed edit took."""

    step_ends: list[float] = field(default_factory=list)
    forwards: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    peak_bytes: int = 0
    latents: Any = None

    @property
    def seconds_per_step(self) -> float:
        return statistics.median(b - a for a, b in zip(self.step_ends, self.step_ends[1:], strict=False))


def time_edit(
    pipeline: Any, image: Any, size: int, steps: int, device: torch.device, cfg_until: float = 1.0
) -> EditTiming:
    """Run one edit and time it step by step; records the transformer's sequence lengths on each forward.

    ``cfg_until`` below 1 keeps guidance to the first steps, as ``IMGEDIT_CFG_UNTIL`` does.
    """
    timing = EditTiming()

    def record_lengths(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        timing.forwards.append((kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1]))

    hook = pipeline.transformer.register_forward_pre_hook(record_lengths, with_kwargs=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with denoiser_seam(pipeline, cfg_until, lambda: steps) as step_ended:

            def step_end(_pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                step_ended(step)
                _synchronize(device)
                timing.step_ends.append(time.perf_counter())
                timing.latents = tensors.get("latents")
                return {}

            _synchronize(device)
            started = time.perf_counter()
            pipeline(
                image=[image],
                prompt=PROMPT,
                negative_prompt=" ",
                true_cfg_scale=4.0,
                height=size,
                width=size,
                num_inference_steps=steps,
                generator=torch.Generator(device="cpu").manual_seed(0),
                callback_on_step_end=step_end,
                output_type="pil",
            )
            _synchronize(device)
            timing.seconds = time.perf_counter() - started
    finally:
        hook.remove()
    if device.type == "cuda":
        timing.peak_bytes = torch.cuda.max_memory_allocated(device)
    return timing


def warm_up(pipeline: Any, image: Any, size: int, device: torch.device, edits: int) -> None:
    """Short edits (two by default): kernels chosen, memory pooled, compilation done; one was not always enough."""
    for _ in range(edits):
        time_edit(pipeline, image, size, 2, device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> str:
    """Run the comparison; return the report's Markdown body."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("full", "reduced"), default="full")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--no-compile", action="store_true", help="leave compilation out of the fast path")
    parser.add_argument("--matmul-side", type=int, default=8192)
    parser.add_argument("--warmups", type=int, default=2, help="short edits before each variant is timed")
    parser.add_argument(
        "--quantize", nargs="*", default=[], choices=("int8", "fp8"), help="also time these IMGEDIT_QUANTIZE methods"
    )
    parser.add_argument(
        "--levers", action="store_true", help="also time the fast path with IMGEDIT_CFG_UNTIL=0.5 and kept encodings"
    )
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_grad_enabled(False)
    configs = load_configs(arguments.scale)
    started = time.perf_counter()
    pipeline = build_pipeline(configs, device, dtype)
    built = time.perf_counter() - started
    image = photo_like(arguments.size, arguments.size)
    transformer = configs["transformer"]

    results: dict[str, EditTiming] = {}
    warm_up(pipeline, image, arguments.size, device, arguments.warmups)
    results["eager"] = time_edit(pipeline, image, arguments.size, arguments.steps, device)
    image_tokens, text_tokens = results["eager"].forwards[0]
    backend = fastest_attention(
        device, dtype, transformer["num_attention_heads"], transformer["attention_head_dim"], image_tokens + text_tokens
    )
    applied = apply_options(
        pipeline, AccelerationOptions(attention_backend=backend, compile=not arguments.no_compile), device
    )
    warm_up(pipeline, image, arguments.size, device, arguments.warmups)
    results["fast"] = time_edit(pipeline, image, arguments.size, arguments.steps, device)
    if arguments.levers:
        results["cfg"] = time_edit(pipeline, image, arguments.size, arguments.steps, device, cfg_until=0.5)
        # The warm-up edits encode the same picture and prompts: the timed edit finds them kept.
        methods = QwenImageEditPlusFamily.encoders[type(pipeline).__name__]
        EncodingCache(4 * 2**30).wrap(pipeline, methods)
        warm_up(pipeline, image, arguments.size, device, 1)
        results["encodings"] = time_edit(pipeline, image, arguments.size, arguments.steps, device)
        results["cfg + encodings"] = time_edit(pipeline, image, arguments.size, arguments.steps, device, 0.5)
        for name in methods:  # the quantized variants below run without them, as before
            delattr(pipeline, name)
    for method in arguments.quantize:
        pipeline.register_modules(transformer=None)  # free the previous transformer before building the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
        pipeline.register_modules(transformer=quantized_transformer(configs, device, dtype, method))
        warm_up(pipeline, image, arguments.size, device, arguments.warmups)
        results[method] = time_edit(pipeline, image, arguments.size, arguments.steps, device)

    rate = matmul_rate(device, dtype, arguments.matmul_side)
    rows = []
    labels = {
        "fast": f"fast ({', '.join(applied)})",
        "eager": "eager (SDPA default)",
        "cfg": "fast, IMGEDIT_CFG_UNTIL=0.5",
        "encodings": "fast, encodings kept (a repeated edit)",
        "cfg + encodings": "fast, CFG until 0.5, encodings kept",
    }
    for name, timing in results.items():
        flops_per_step = sum(transformer_flops(transformer, *lengths) for lengths in timing.forwards) / arguments.steps
        cosine = torch.nn.functional.cosine_similarity(
            timing.latents.float().flatten(), results["eager"].latents.float().flatten(), dim=0
        )
        rows.append(
            (
                labels.get(name, f"{name} weights (IMGEDIT_QUANTIZE={name}, eager)"),
                f"{timing.seconds_per_step:.3f}",
                f"{timing.seconds:.1f}",
                f"{timing.peak_bytes / 2**30:.1f}" if timing.peak_bytes else "n/a",
                f"{flops_per_step / 1e12:.1f}",
                f"{flops_per_step / rate / timing.seconds_per_step:.2f}",
                f"{results['eager'].seconds_per_step / timing.seconds_per_step:.2f}x",
                f"{float(cosine):.6f}",
            )
        )
    body = (
        f"Qwen-Image-Edit-2511 architecture ({arguments.scale} scale), random {str(dtype).removeprefix('torch.')} "
        f"weights on {device.type}, built in {built:.0f} s. {arguments.size}x{arguments.size} output from one "
        f"{arguments.size}x{arguments.size} reference, true CFG, {arguments.steps} steps; "
        f"{image_tokens} image + {text_tokens} text tokens per conditional forward. "
        f"Matrix-multiply rate here: {rate / 1e12:.1f} TFLOP/s ({arguments.matmul_side}^2, "
        f"{str(dtype).removeprefix('torch.')}).\n\n"
        + table(
            ("variant", "s/step", "edit s", "peak GiB", "TFLOP/step", "share of floor", "speed-up", "latent cosine"),
            rows,
        )
    )
    report("gpu-qwen", "Qwen-Image-Edit-2511 on the GPU: eager against the fast path", body, arguments.write)
    return body


if __name__ == "__main__":
    main()
