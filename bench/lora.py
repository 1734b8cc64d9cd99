"""What choosing a LoRA adapter per request costs: against no adapter, and against the same adapter fused.

Times one edit of a tiny model in-process, the way the engine runs it, in four
settings taking turns: no adapter loaded at all; an adapter loaded but off (a
request without one); an adapter chosen per request (unfused, switched on
before the run, as the engine does); and the same adapter fused into the
weights (``IMGEDIT_LORA_FUSE``). A fifth row switches between two adapters on
every run, which is the worst case of mixed traffic. The adapters are random
rank-``--rank`` LoRAs on every attention projection.

    python -m bench.lora --sizes 256 512 --steps 4 --runs 15
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import load_family, report, table
from devtools.lora_files import write_lora
from imgedit.edit import EditOptions
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import spec_in_directory
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size

SETTINGS = ("none loaded", "loaded, off", "per request", "per request, switching", "fused")


def measure(
    size: int, steps: int, runs: int, plain: Any, unfused: Any, fused: Any, registry: LoraRegistry
) -> list[tuple[str, str, str, str]]:
    """One row per setting at ``size``: median ms per edit and its ratio to no adapter loaded."""
    image = [InputImage(rgb=Image.new("RGB", (size, size), (40, 120, 200)), alpha=None)]

    def edit(family: Any, before: Callable[[], None] | None = None) -> float:
        options = EditOptions(prompt="make it snow", seed=1, num_inference_steps=steps)
        (call,) = family.plan(family.resolve(options, image, Size(size, size))).calls
        started = time.perf_counter()
        if before is not None:
            before()
        call.invoke()
        return time.perf_counter() - started

    choices = iter(((("ink", 1.0),), (("light", 1.0),)) * runs * 2)
    settings = {
        "none loaded": lambda: edit(plain),
        "loaded, off": lambda: edit(unfused, lambda: registry.activate(())),
        "per request": lambda: edit(unfused, lambda: registry.activate((("ink", 1.0),))),
        "per request, switching": lambda: edit(unfused, lambda: registry.activate(next(choices))),
        "fused": lambda: edit(fused),
    }
    for run in settings.values():  # warm-up
        run()
    timings: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(runs):
        for setting in SETTINGS:  # taking turns, so drift hits every setting alike
            timings[setting].append(settings[setting]())
    base = statistics.median(timings["none loaded"])
    rows = []
    for setting in SETTINGS:
        median = statistics.median(timings[setting])
        rows.append((f"{size}x{size}", setting, f"{median * 1000:.1f}", f"{median / base:.3f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:qwen-image-edit-plus")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    plain, unfused, fused = (load_family(arguments.model, arguments.steps) for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-lora-") as directory:
        for seed, name in enumerate(("ink", "light"), start=1):
            write_lora(plain.loaded, Path(directory) / name, seed, rank=arguments.rank)
        registry = LoraRegistry(unfused.loaded, max_loras=2)
        for name in ("ink", "light"):
            registry.load(name, spec_in_directory(directory, name))
        fused_registry = LoraRegistry(fused.loaded, max_loras=1)
        fused_registry.load("ink", spec_in_directory(directory, "ink"))
        fused.loaded.set_adapters(["ink"])
        fused.loaded.fuse_lora(adapter_names=["ink"])
        fused.loaded.unload_lora_weights()

        rows = [
            row
            for size in arguments.sizes
            for row in measure(size, arguments.steps, arguments.runs, plain, unfused, fused, registry)
        ]

    body = (
        f"`{arguments.model}`, one edit of {arguments.steps} steps, random rank-{arguments.rank} LoRAs on every "
        f"attention projection, median of {arguments.runs} runs per setting, settings taking turns. The time "
        "includes switching the adapters before the run, as the engine does.\n\n"
        + table(("size", "adapter", "ms per edit", "vs none loaded"), rows)
        + "\n\nHow to read it. An adapter chosen per request adds its two low-rank matrix multiplies to every "
        "projection it covers; a fused one adds nothing, so the fused row measures this machine's noise between "
        "settings. Switching sets the active adapters and their scales in peft (no weights move), once before a "
        "run, never during one."
    )
    report("lora", "LoRA adapters per request", body, arguments.write)


if __name__ == "__main__":
    main()
