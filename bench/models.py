"""Several models on one server (``IMGEDIT_MODELS``): what a swap costs, and an interleaved load against two servers.

Three parts:

- Swaps on the tiny models, on the CPU: each model's weights, the time
  :meth:`~imgedit.weights.residency.Residency.bring` takes to swap it in (the
  device is host memory, so a swap moves nothing and this is the bookkeeping),
  and the time to copy its weights once in host memory (what a move costs
  where a copy happens).
- An interleaved load: ``--clients`` clients send edits alternating between
  two tiny models, first to one server of both models (with both on the
  device, then with one at a time, swapping), then split between two servers
  of one model each, running side by side. Edits per second, median of
  ``--repeats`` rounds, the layouts taking turns.
- Computed swap times for the full-size models over PCIe 5.0 x16, from their
  weights in bfloat16 as the memory plan counts them.

    python -m bench.models --clients 4 --requests 24 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from bench.common import load_family, report, table
from devtools.server import Server, start_server, stop
from imgedit.scheduling.order import OVERTAKE_BOUND
from imgedit.weights import memory
from imgedit.weights.residency import Residency
from tests.helpers import gradient_png

#: The two tiny models of the interleaved load, by served name.
PAIR = {"qwen-image-edit-plus": "tiny:qwen-image-edit-plus", "flux2-klein": "tiny:flux2-klein"}
#: The layout the others are compared with.
TWO_SERVERS = "two servers, one model each"
#: The layouts of the interleaved load.
LAYOUTS = ("one server, both on the device", "one server, one at a time", TWO_SERVERS)
#: PCIe 5.0 x16, one direction: 32 GT/s on 16 lanes with 128b/130b encoding.
PCIE5_X16_BYTES_PER_SECOND = 32e9 * 16 * 128 / 130 / 8


def swap_rows(models: Sequence[str], runs: int) -> list[tuple[str, ...]]:
    """Per tiny model: its weights, the median time to swap it in, and the median time to copy its weights."""
    families = {model: load_family(model, steps=2) for model in models}
    residency = Residency(torch.device("cpu"))
    sizes = {}
    for model, family in families.items():
        sizes[model] = sum(memory.parameter_bytes(component) for component in _modules(family.loaded))
        residency.add(model, family.loaded)
        residency.park(model, sizes[model])  # as start-up does: every model waits in host memory, then the plan
    residency.keep(1, list(models))
    rows = []
    for model, family in families.items():
        other = next(name for name in models if name != model)
        swaps, copies = [], []
        for _ in range(runs):
            residency.bring(other)
            started = time.perf_counter()
            residency.bring(model)
            swaps.append(time.perf_counter() - started)
            tensors = [tensor for component in _modules(family.loaded) for tensor in component.state_dict().values()]
            started = time.perf_counter()
            for tensor in tensors:
                tensor.clone()
            copies.append(time.perf_counter() - started)
        rows.append(
            (
                model,
                f"{sizes[model] / 2**20:.1f}",
                f"{statistics.median(swaps) * 1e6:.1f}",
                f"{statistics.median(copies) * 1e3:.2f}",
            )
        )
    return rows


def _modules(pipeline: object) -> list[torch.nn.Module]:
    components = getattr(pipeline, "components", {})
    return [item for item in components.values() if isinstance(item, torch.nn.Module)]


def computed_rows() -> list[tuple[str, ...]]:
    """The full-size models' bf16 weights and a swap's floor over the link: the other model out, this one in."""
    from bench.quantization import full_size_footprints

    models = full_size_footprints(("Qwen-Image-Edit-2511", "FLUX.2-klein-4B"))
    weights = {
        name: sum(memory.device_need(footprints, torch.bfloat16, memory.Placement()).weights)
        for name, footprints in models.items()
    }
    rows = []
    for name, size in weights.items():
        other = next(each for each in weights if each != name)
        floor = (size + weights[other]) / PCIE5_X16_BYTES_PER_SECOND
        rows.append((name, f"{size / memory.GiB:.1f}", other, f"{floor:.2f}", f"{floor * 2:.2f}"))
    return rows


def interleaved(urls: Sequence[str], clients: int, requests: int, steps: int) -> float:
    """Edits per second of ``requests`` edits alternating between the two models, from ``clients`` clients; the
    edits for model i go to ``urls[i % len(urls)]`` (one server of both, or one server each)."""
    names = list(PAIR)
    image = gradient_png(64, 64)

    def edit(number: int) -> None:
        model = names[number % 2]
        url = urls[number % 2 % len(urls)]
        fields = {"prompt": "make it snow", "size": "64x64", "num_inference_steps": str(steps), "model": model}
        answer = httpx.post(f"{url}/v1/images/edits", files=[("image", image)], data=fields, timeout=300)
        answer.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(edit, range(requests)))
    return requests / (time.perf_counter() - started)


def load_rows(clients: int, requests: int, steps: int, repeats: int, chosen: Sequence[str]) -> list[tuple[str, ...]]:
    """Edits per second of each ``chosen`` layout, median of ``repeats`` rounds, and the ratio to two servers."""
    both = ",".join(f"{name}={source}" for name, source in PAIR.items())
    layouts: dict[str, Callable[[Path], list[Server]]] = {
        "one server, both on the device": lambda tmp: [
            start_server(tmp / "both", IMGEDIT_MODEL="", IMGEDIT_MODELS=both, IMGEDIT_MAX_QUEUE="64")
        ],
        "one server, one at a time": lambda tmp: [
            start_server(
                tmp / "one", IMGEDIT_MODEL="", IMGEDIT_MODELS=both, IMGEDIT_RESIDENT_MODELS="1", IMGEDIT_MAX_QUEUE="64"
            )
        ],
        # Each with half the cores: two PyTorch thread pools of all of them would fight over them.
        TWO_SERVERS: lambda tmp: [
            start_server(
                tmp / name,
                IMGEDIT_MODEL=source,
                IMGEDIT_SERVED_MODEL_NAME=name,
                IMGEDIT_MAX_QUEUE="64",
                OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // 2)),
            )
            for name, source in PAIR.items()
        ],
    }
    layouts = {layout: start for layout, start in layouts.items() if layout in chosen}
    rates: dict[str, list[float]] = {layout: [] for layout in layouts}
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-models-") as directory:
        running = {}
        for layout, start in layouts.items():
            tmp = Path(directory) / str(len(running))
            tmp.mkdir()
            for sub in ("both", "one", *PAIR):
                (tmp / sub).mkdir()
            running[layout] = start(tmp)
        try:
            for round_number in range(repeats):
                order = list(layouts)[round_number % len(layouts) :] + list(layouts)[: round_number % len(layouts)]
                for layout in order:
                    urls = [server.url for server in running[layout]]
                    rates[layout].append(interleaved(urls, clients, requests, steps))
        finally:
            for servers in running.values():
                for server in servers:
                    stop(server.process)
    base = statistics.median(rates.get(TWO_SERVERS) or [float("nan")])
    return [
        (layout, f"{statistics.median(values):.2f}", f"{statistics.median(values) / base:.2f}")
        for layout, values in rates.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*PAIR.values(), "tiny:stable-diffusion-inpaint"])
    parser.add_argument("--swap-runs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument(
        "--computed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the full-size models' computed swap times (building them on the meta device takes seconds)",
    )
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    swaps = swap_rows(arguments.models, arguments.swap_runs)
    load = load_rows(arguments.clients, arguments.requests, arguments.steps, arguments.repeats, arguments.layouts)
    body = (
        f"Swaps on the tiny models, median of {arguments.swap_runs}: the device here is the CPU, so a swap moves "
        "nothing and its time is the bookkeeping alone (a pipeline's `to` would walk every module even so, about 8 ms "
        "for these, and is skipped); the copy column is one copy of the weights in host memory.\n\n"
        + table(("model", "weights MiB", "swap in, µs", "copy of the weights, ms"), swaps)
        + f"\n\nAn interleaved load of two tiny models: {arguments.clients} clients, {arguments.requests} edits "
        f"per round alternating between the models, 64x64, {arguments.steps} steps, median of {arguments.repeats} "
        "rounds, the layouts taking turns.\n\n"
        + table(("layout", "edits/s", "vs two servers"), load)
        + "\n\nComputed, not measured: a swap's floor over PCIe 5.0 x16 "
        f"({PCIE5_X16_BYTES_PER_SECOND / 1e9:.0f} GB/s each way), the other model's weights out, then this one's in "
        "(bf16, as the memory plan counts them); the last column if the copies reach half the link, as copies "
        "from pageable host memory often do.\n\n"
        + table(
            ("model swapped in", "weights GiB", "swapped out", "floor s", "at half the link s"),
            computed_rows() if arguments.computed else [],
        )
        + "\n\nHow to read it. The two servers run side by side with half the cores each (`OMP_NUM_THREADS`; with "
        "all of them each, their thread pools fight over the cores). They run two edits at once where one server of "
        "both runs one, and an edit this small gains little from a second core, so here they do about twice the "
        "edits; on GPUs each needs a GPU of its own, which is what one server of both saves. One model on the device "
        "at a time costs nothing more here because a swap on the CPU moves nothing; on a GPU each change of model "
        f"costs a swap (the table above), and the scheduler lets edits for the model on the device go first, at most "
        f"{OVERTAKE_BOUND} ahead of any other, so a mixed load swaps less than its arrival order would."
    )
    report("models", "Several models on one server", body, arguments.write)


if __name__ == "__main__":
    main()
