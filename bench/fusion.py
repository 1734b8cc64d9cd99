"""What fusing queued requests into one batched call buys (``IMGEDIT_MAX_BATCH``).

Queues the same burst of single-image InstructPix2Pix edits on the engine with
batching off and on, interleaved, and reports the median throughput of each
and their ratio. Tiny models on a CPU by default; pass ``--model`` to measure a
real one where it runs.

    python -m bench.fusion --sizes 64 256 --requests 16 --batches 1 4 8 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from PIL import Image

from bench.common import load_family, report, table
from imgedit.edit import EditOptions
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families.base import Family
from imgedit.scheduling.engine import Engine


async def burst(engine: Engine, family: Family, size: int, requests: int, steps: int) -> float:
    """Seconds for ``requests`` queued edits to finish."""
    jobs = []
    started = time.perf_counter()
    for index in range(requests):
        options = EditOptions(prompt=f"edit number {index}", num_inference_steps=steps, seed=index)
        image = InputImage(rgb=Image.new("RGB", (size, size), (index * 13 % 256, 90, 30)), alpha=None)
        (call,) = family.plan(family.resolve(options, [image], Size(size, size))).calls
        jobs.append(engine.submit([call]))
    for job in jobs:
        await engine.result(job, time.monotonic() + 3600)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:instruct-pix2pix")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    family = load_family(arguments.model, arguments.steps)
    engines = {
        batch: Engine(max_queue=arguments.requests, max_batch=batch, fusable=family.fusable)
        for batch in arguments.batches
    }
    rows = []
    for size in arguments.sizes:
        timings: dict[int, list[float]] = {batch: [] for batch in arguments.batches}
        for batch in arguments.batches:  # warm-up at this size
            await burst(engines[batch], family, size, arguments.batches[-1], arguments.steps)
        for _ in range(arguments.repeats):
            for batch in arguments.batches:  # interleaved, so drift hits every setting alike
                timings[batch].append(await burst(engines[batch], family, size, arguments.requests, arguments.steps))
        base = statistics.median(timings[arguments.batches[0]])
        for batch in arguments.batches:
            median = statistics.median(timings[batch])
            rows.append((size, batch, arguments.requests / median, base / median))
    for engine in engines.values():
        engine.close()

    body = (
        f"`{arguments.model}`, {arguments.requests} single-image edits queued at once, {arguments.steps} steps, "
        f"median of {arguments.repeats} interleaved bursts per setting.\n\n"
        + table(
            ("size", "max batch", "images/s", "speed-up"),
            [
                (f"{size}x{size}", batch, f"{throughput:.1f}", f"{ratio:.2f}x")
                for size, batch, throughput, ratio in rows
            ],
        )
    )
    report("fusion", "Fusing queued requests (`IMGEDIT_MAX_BATCH`)", body, arguments.write)


if __name__ == "__main__":
    asyncio.run(main())
