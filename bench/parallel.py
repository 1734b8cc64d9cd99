"""One edit on two ranks against one rank, on this machine's CPU; and the GPU memory per rank of tensor parallelism.

Two parts:

* **Measured** (CPU, tiny model): the same edit (``tiny:qwen-image-edit-plus``,
  two input images, true CFG, ``--steps`` steps) made three ways, strictly
  alternating in rounds so that none runs on caches its own last run warmed:
  ``1 rank`` (this process, one PyTorch thread per core), ``1 rank, 1 thread``
  and ``2 ranks`` (Ulysses over gloo: this process as rank 0 and one child
  process, one thread each, through the server's own
  :class:`~imgedit.ranks.group.RankGroup`, checkpoints included). Two ranks
  on two cores do the same work plus the all-to-alls and checkpoints: no speed-up
  is expected; the table shows what the split costs. It also gives the largest
  pixel difference between the two ranks' images and one rank's.
* **Computed** (no GPU needed): GPU memory per rank for the weights of the
  full-size Qwen-Image-Edit-2511 with ``IMGEDIT_TP_DEGREE`` 2, 4 and 8, from
  diffusers' own sharding plan (``resolve_tp_shard_specs`` on the transformer
  built on the meta device from ``bench/configs/``): planned linear layers hold
  1/degree of their weights per rank, everything else (AdaLN modulation, norms,
  embeddings, the text encoder, the VAE) is whole on every rank.

    python -m bench.parallel --sizes 128 256 512 --rounds 10 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import SEED, median, photo_like, report, seconds, table
from imgedit.config import Settings
from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.call import PipelineCall
from imgedit.model.families.base import Family
from imgedit.ranks.group import RankGroup
from imgedit.serving.options import rank_layout
from imgedit.serving.recipe import ModelRecipe, prepare_model
from imgedit.serving.startup import rank_setup

MODEL = "tiny:qwen-image-edit-plus"
PROMPT = "make the sky a deep orange"
GiB = 2**30


def plan(family: Family, size: int, steps: int) -> list[PipelineCall]:
    images = [InputImage(photo_like(size, size, seed), None) for seed in (0, 1)]
    options = EditOptions(prompt=PROMPT, seed=SEED, num_inference_steps=steps)
    return family.plan(family.resolve(options, images, Size(size, size))).calls


#: The layouts of two ranks measured, one table each: Ulysses, and guidance's branches (``IMGEDIT_CFG_PARALLEL``).
TWO_RANKS = {"Ulysses 2": {"ulysses_degree": 2}, "CFG 2": {"cfg_parallel": True}}


def measured(layout: str, sizes: list[int], rounds: int, warmup: int, steps: int) -> str:
    """One table: ``layout`` (a key of :data:`TWO_RANKS`) against one rank, in alternating rounds.

    One process holds one process group at a time, so each layout gets a table (and baselines) of its own.
    """
    load_before = os.getloadavg()[0]
    cores = torch.get_num_threads()
    settings = Settings(model=MODEL, device="cpu", **TWO_RANKS[layout])
    recipe = ModelRecipe.from_settings(settings)
    single = prepare_model(ModelRecipe.from_settings(Settings(model=MODEL, device="cpu")), 0).family
    group = RankGroup(rank_setup(settings, recipe, rank_layout(settings)), 0, torch.device("cpu"), on_fatal=_raise)
    group.start()
    try:
        split = prepare_model(recipe, 0, group.loaded).family
        group.attach(split)
        rows = []
        for size in sizes:
            ways: dict[str, tuple[int, Callable[[], list[Any]]]] = {
                "1 rank": (cores, _runner(plan(single, size, steps), lambda call: call.invoke())),
                "1 rank, 1 thread": (1, _runner(plan(single, size, steps), lambda call: call.invoke())),
                layout: (1, _runner(plan(split, size, steps), group.invoke)),
            }
            timings: dict[str, list[float]] = {name: [] for name in ways}
            outputs: dict[str, list[Any]] = {}
            for index in range(warmup + rounds):
                for name in list(ways) if index % 2 == 0 else list(reversed(ways)):
                    threads, run = ways[name]
                    torch.set_num_threads(threads)
                    elapsed = seconds(_keeping(outputs, name, run))
                    if index >= warmup:
                        timings[name].append(elapsed)
            one, one_thread, two = (median(timings[name]) for name in ways)
            difference = _largest_difference(outputs[layout], outputs["1 rank"])
            rows.append(
                [f"{size}x{size}", f"{one * 1000:.0f}", f"{one_thread * 1000:.0f}", f"{two * 1000:.0f}",
                 f"{two / one:.2f}", f"{two / one_thread:.2f}", difference]
            )  # fmt: skip
    finally:
        group.close()
        torch.set_num_threads(cores)
    header = ["size", "1 rank ms", "1 rank, 1 thread ms", f"{layout} ms", f"{layout} / 1 rank"]
    header += [f"{layout} / 1 thread", "max diff"]
    intro = (
        f"`{MODEL}`, two {'/'.join(str(size) for size in sizes)} px input images, true CFG, {steps} step(s), "
        f"medians of {rounds} rounds after {warmup} warm-up rounds; 1 rank uses {cores} threads, each of the 2 "
        "ranks 1. Max diff: the largest difference of any pixel channel between the 2-rank and 1-rank images "
        f"(0-255). The 1-minute load average was {load_before:.1f} before and {os.getloadavg()[0]:.1f} after: a "
        "thread pool as wide as the cores loses most when other processes want a core too."
    )
    return intro + "\n\n" + table(header, rows)


def _largest_difference(first: list[Any], second: list[Any]) -> int:
    return max(int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()) for a, b in zip(first, second, strict=True))


def _keeping(outputs: dict[str, list[Any]], name: str, run: Callable[[], list[Any]]) -> Callable[[], None]:
    """``run``, keeping its images as ``outputs[name]``."""

    def keep() -> None:
        outputs[name] = run()

    return keep


def _runner(calls: list[PipelineCall], invoke: Callable[[PipelineCall], list[Any]]) -> Callable[[], list[Any]]:
    def run() -> list[Any]:
        return [image for call in calls for image in invoke(call)]

    return run


def _raise(message: str) -> None:
    raise RuntimeError(message)


def computed(degrees: list[int]) -> str:
    from diffusers.hooks.tensor_parallel import resolve_tp_shard_specs

    from bench.gpu_qwen import build_pipeline, load_configs

    pipeline = build_pipeline(load_configs("full"), torch.device("meta"), torch.bfloat16)
    transformer = pipeline.transformer
    replicated = sum(_parameters(component) for component in (pipeline.text_encoder, pipeline.vae))
    rows = []
    for degree in [1, *degrees]:
        specs = resolve_tp_shard_specs(transformer, type(transformer)._tp_plan, degree)
        per_rank = sum(
            parameter.numel() // degree if name in specs and specs[name].dim is not None else parameter.numel()
            for name, parameter in transformer.named_parameters()
        )
        rows.append(
            [degree, f"{per_rank / 1e9:.2f}", f"{per_rank * 2 / GiB:.1f}", f"{replicated * 2 / GiB:.1f}",
             f"{(per_rank + replicated) * 2 / GiB:.1f}"]
        )  # fmt: skip
    sharded = sum(
        1
        for spec in resolve_tp_shard_specs(transformer, type(transformer)._tp_plan, 2).values()
        if spec.dim is not None
    )
    intro = (
        "Computed, not measured: Qwen-Image-Edit-2511 in bfloat16 (2 bytes per parameter), weights only "
        f"(activations come on top). The transformer has {_parameters(transformer) / 1e9:.2f} B parameters, "
        f"{sharded} of its tensors sharded by diffusers' plan; the text encoder and VAE "
        f"({replicated / 1e9:.2f} B) are whole on every rank. Context parallelism "
        "(`IMGEDIT_ULYSSES_DEGREE`, `IMGEDIT_RING_DEGREE`) keeps all weights on every rank: the 1-rank row."
    )
    header = ["IMGEDIT_TP_DEGREE", "transformer B params per rank", "transformer GiB", "text encoder + VAE GiB",
              "GiB per rank"]  # fmt: skip
    return intro + "\n\n" + table(header, rows)


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tp-degrees", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--layouts", nargs="+", choices=list(TWO_RANKS), default=list(TWO_RANKS))
    parser.add_argument("--write", type=Path, help="write the results into this Markdown file")
    args = parser.parse_args(argv)
    titles = {
        "Ulysses 2": "### Two Ulysses ranks against one (measured, CPU)\n\n",
        "CFG 2": "### Guidance's two branches on two ranks against one (measured, CPU)\n\n"
        "Each rank runs steps + 1 denoiser passes where one rank runs 2 x steps (the first step runs both "
        "branches in turn); both ranks still run the text encoder and the VAE in full.\n\n",
    }
    body = "".join(
        titles[layout] + measured(layout, args.sizes, args.rounds, args.warmup, args.steps) + "\n\n"
        for layout in args.layouts
    )
    body += "### GPU memory per rank with tensor parallelism (computed)\n\n" + computed(args.tp_degrees)
    report("parallel", "One edit on several ranks", body, args.write)
    return body


if __name__ == "__main__":
    main()
