"""What the server adds to an edit: end to end through ``bentoml serve`` against the pipeline called in-process.

For each output size, ``n`` and output format, rounds time three things,
strictly alternating the direct call with each client (see :func:`measure`):

* ``direct``: the same pipeline object, loaded in this process, called with
  the arguments the server gives it for the request and the way the server
  calls it (the server's own family plans the call), returning PIL images:
  what a script calling diffusers would do;
* ``sdk``: the request sent with the official ``openai`` client, its
  ``b64_json`` decoded to image bytes;
* ``httpx``: the same request as a raw multipart POST.

The server and this process run the same model with the same number of
threads, one at a time. The table gives medians after warm-up rounds (the
direct call is timed twice a round) and the ratio of each client's median to
the direct one.

    python -m bench.overhead --sizes 256 512 1024 --n 1 4 --formats png jpeg --runs 20
"""

from __future__ import annotations

import argparse
import base64
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import torch

from bench.common import direct_edit, edit_form, load_family, median, photo_like, png_bytes, report, seconds, table
from devtools.server import start_server, stop


def sdk_edit(client: openai.OpenAI, upload: bytes, fields: dict[str, str]) -> Callable[[], object]:
    extra = {key: fields[key] for key in ("num_inference_steps", "seed")}

    def run() -> object:
        result = client.images.edit(
            image=("image.png", upload, "image/png"),
            prompt=fields["prompt"],
            size=fields["size"],  # type: ignore[arg-type]
            n=int(fields["n"]),
            output_format=fields["output_format"],  # type: ignore[arg-type]
            extra_body=extra,
        )
        images = [base64.b64decode(item.b64_json or "") for item in result.data or []]
        assert len(images) == int(fields["n"]) and all(images)
        return images

    return run


def httpx_edit(client: httpx.Client, upload: bytes, fields: dict[str, str]) -> Callable[[], object]:
    def run() -> object:
        response = client.post("/v1/images/edits", data=fields, files={"image": ("image.png", upload, "image/png")})
        response.raise_for_status()
        images = [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]
        assert len(images) == int(fields["n"])
        return images

    return run


def measure(
    direct: Callable[[], object], clients: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per run: each round pairs the direct call with each client in turn, strictly alternating.

    Every run follows one of the other side (direct after a server edit, a
    server edit after a direct one), so neither side finds the CPU caches warm
    from its own previous run; which goes first alternates between rounds.
    Warm-up rounds are dropped.
    """
    timings: dict[str, list[float]] = {name: [] for name in ("direct", *clients)}
    for index in range(warmup + rounds):
        for name, client in clients.items():
            pair = [("direct", direct), (name, client)]
            for label, run in pair if index % 2 == 0 else reversed(pair):
                elapsed = seconds(run)
                if index >= warmup:
                    timings[label].append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:instruct-pix2pix")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--formats", nargs="+", default=["png", "jpeg"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    family = load_family(arguments.model, arguments.steps)
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
        server = start_server(Path(tmp), IMGEDIT_MODEL=arguments.model)
        try:
            sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=3600)
            raw = httpx.Client(base_url=server.url, timeout=3600)
            rows = []
            for size in arguments.sizes:
                upload = png_bytes(photo_like(size, size))
                for n in arguments.n:
                    for output_format in arguments.formats:
                        fields = edit_form(size, n, output_format, arguments.steps)
                        direct = direct_edit(family, upload, size, n, arguments.steps)
                        clients = {"sdk": sdk_edit(sdk, upload, fields), "httpx": httpx_edit(raw, upload, fields)}
                        timings = measure(direct, clients, arguments.runs, arguments.warmup)
                        medians = {name: median(values) for name, values in timings.items()}
                        rows.append(
                            (
                                f"{size}x{size}",
                                n,
                                output_format,
                                f"{medians['direct'] * 1000:.0f}",
                                f"{(medians['sdk'] - medians['direct']) * 1000:+.0f}",
                                f"{medians['sdk'] / medians['direct']:.3f}",
                                f"{(medians['httpx'] - medians['direct']) * 1000:+.0f}",
                                f"{medians['httpx'] / medians['direct']:.3f}",
                            )
                        )
                        print(rows[-1], flush=True)
            raw.close()
        finally:
            stop(server.process)
    body = (
        f"`{arguments.model}`, {arguments.steps} steps, median of {arguments.runs} interleaved rounds after "
        f"{arguments.warmup} warm-up rounds; direct in ms, then each client's extra ms and its ratio to direct.\n\n"
        + table(("size", "n", "format", "direct ms", "sdk +ms", "sdk / direct", "httpx +ms", "httpx / direct"), rows)
    )
    report("overhead", "Overhead of the server over the pipeline", body, arguments.write)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
