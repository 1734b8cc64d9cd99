"""Server memory: RSS over many sequential edits, and the peak an upload of a 20-megapixel PNG adds.

1. Leak check: ``--requests`` small edits one after another; the worker's RSS
   after ``--warmup`` of them is the baseline, and growth is measured against
   it every ``--every`` requests. Target: under 5 % at the end.
2. Large upload: a fresh server per trial (so that memory freed by an earlier
   trial cannot hide this one's peak) gets one small warm-up edit, then one
   edit whose image is a photo-like PNG of ``--large`` pixels (20 MP by default,
   5472x3648 as a 20-megapixel camera takes). The raise is the worker's peak
   RSS during that request minus its RSS just before. A control trial sends a
   512x512 upload instead, so the table separates what the upload costs from
   what running the pipeline costs. Target: the raise is at most 4x the
   decoded image (width x height x 3 bytes).

    python -m bench.memory --requests 500 --trials 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx

from bench.common import edit_form, median, peak_rss, photo_like, png_bytes, report, reset_peak_rss, rss, table
from devtools.server import start_server, stop

MiB = 2**20
#: The 5472x3648 sensor of a typical 20-megapixel camera.
LARGE = (5472, 3648)


def edit(http: httpx.Client, fields: dict[str, str], upload: bytes) -> None:
    response = http.post("/v1/images/edits", data=fields, files={"image": ("image.png", upload, "image/png")})
    response.raise_for_status()


def leak_check(model: str, requests: int, warmup: int, every: int, fields: dict[str, str]) -> list[tuple[int, int]]:
    """``(requests sent, worker RSS in bytes)`` after the warm-up and every ``every`` requests after it."""
    upload = png_bytes(photo_like(128, 128))
    samples = []
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
        server = start_server(Path(tmp), IMGEDIT_MODEL=model)
        try:
            worker = server.worker().pid
            with httpx.Client(base_url=server.url, timeout=600) as http:
                for sent in range(1, requests + 1):
                    edit(http, fields, upload)
                    if sent in (warmup, requests) or (sent > warmup and (sent - warmup) % every == 0):
                        samples.append((sent, rss(worker)))
        finally:
            stop(server.process)
    return samples


def upload_peak(model: str, upload: bytes, fields: dict[str, str]) -> int:
    """Bytes the worker's peak RSS rises by while it serves one edit of ``upload``, on a fresh server."""
    with tempfile.TemporaryDirectory(prefix="imgedit-bench-") as tmp:
        server = start_server(Path(tmp), IMGEDIT_MODEL=model)
        try:
            worker = server.worker().pid
            with httpx.Client(base_url=server.url, timeout=600) as http:
                edit(http, fields, png_bytes(photo_like(512, 512)))
                reset_peak_rss(worker)
                before = rss(worker)
                edit(http, fields, upload)
                return peak_rss(worker) - before
        finally:
            stop(server.process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:instruct-pix2pix")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--every", type=int, default=120)
    parser.add_argument("--large", type=int, nargs=2, default=list(LARGE), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()
    fields = edit_form(128, 1, "png", arguments.steps)

    samples = leak_check(arguments.model, arguments.requests, arguments.warmup, arguments.every, fields)
    baseline = samples[0][1]
    leak_rows = [(sent, f"{size / MiB:.1f}", f"{(size - baseline) / baseline * 100:+.2f} %") for sent, size in samples]

    width, height = arguments.large
    large = png_bytes(photo_like(width, height))
    decoded = width * height * 3
    control = png_bytes(photo_like(512, 512))
    raises: dict[str, list[int]] = {"control": [], "large": []}
    for _ in range(arguments.trials):
        raises["control"].append(upload_peak(arguments.model, control, fields))
        raises["large"].append(upload_peak(arguments.model, large, fields))
        print(raises, flush=True)
    large_raise = median(raises["large"])
    peak_rows = [
        (
            "512x512 (control)",
            f"{len(control) / MiB:.1f}",
            f"{512 * 512 * 3 / MiB:.1f}",
            f"{median(raises['control']) / MiB:.0f}",
            "",
        ),
        (
            f"{width}x{height}",
            f"{len(large) / MiB:.1f}",
            f"{decoded / MiB:.1f}",
            f"{large_raise / MiB:.0f}",
            f"{large_raise / decoded:.2f}x",
        ),
    ]
    body = (
        f"`{arguments.model}`, {arguments.steps} steps, 128x128 PNG in and out.\n\n"
        f"**RSS over {arguments.requests} sequential edits** (worker process; baseline after "
        f"{arguments.warmup}):\n\n"
        + table(("requests", "RSS MiB", "growth"), leak_rows)
        + f"\n\n**Peak RSS raised by one upload** (median of {arguments.trials} fresh servers each):\n\n"
        + table(("upload", "PNG MiB", "decoded MiB", "peak raise MiB", "raise / decoded"), peak_rows)
    )
    report("memory", "Memory", body, arguments.write)


if __name__ == "__main__":
    main()
