"""Each CPU benchmark runs at its smallest setting, so that none of them rots; nothing is timed or written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.server import ROOT

SMALLEST = {
    "overhead": ["--sizes", "64", "--n", "1", "--formats", "png", "--runs", "1", "--warmup", "0", "--steps", "1"],
    "concurrency": ["--size", "64", "--clients", "1", "2", "--requests", "3", "--direct-runs", "1", "--steps", "1"],
    "memory": ["--requests", "3", "--warmup", "1", "--every", "1", "--large", "640", "480", "--trials", "1"],
    "startup": ["--runs", "1"],
    "fusion": ["--sizes", "64", "--requests", "2", "--batches", "1", "2", "--repeats", "1"],
    "png_encoding": ["--sides", "64", "--runs", "1"],
    "quantization": ["--models", "tiny:flux-kontext", "--size", "64", "--steps", "2", "--runs", "1"],
    "parallel": [
        "--sizes",
        "64",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--tp-degrees",
        "2",
        "--layouts",
        "CFG 2",
    ],
    "lora": ["--sizes", "64", "--steps", "1", "--runs", "1", "--rank", "2"],
    "levers": ["--steps", "4", "--runs", "1", "--full-side", "256"],
    "models": [
        *("--swap-runs", "1", "--clients", "1", "--requests", "2", "--steps", "1", "--repeats", "1"),
        *("--layouts", "one server, one at a time", "--models", "tiny:flux2-klein", "tiny:stable-diffusion-inpaint"),
        "--no-computed",  # the full-size footprints: the generated tables of the docs build them (test_docs)
    ],
}
HEADERS = {
    "overhead": "| size | n | format | direct ms |",
    "concurrency": "| clients | edits/s | of ceiling |",
    "memory": "| upload | PNG MiB | decoded MiB | peak raise MiB |",
    "startup": "| what | seconds | ratio |",
    "fusion": "| size | max batch |",
    "png_encoding": "| size | encoder | ms |",
    "quantization": "| tiny:flux-kontext | int8 + text encoders |",
    "parallel": "| size | 1 rank ms | 1 rank, 1 thread ms | CFG 2 ms |",
    "lora": "| 64x64 | per request, switching |",
    "levers": "| recipe | denoiser calls | text encoder calls | VAE encoder calls |",
    "models": "| layout | edits/s | vs two servers |",
}


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_the_benchmark_runs_and_prints_its_table(script: str) -> None:
    results = ROOT / "docs" / "benchmarks.md"
    before = results.read_text()
    completed = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", *SMALLEST[script]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert HEADERS[script] in completed.stdout
    assert results.read_text() == before
