"""What the benchmark scripts share: the machine's description, statistics, test images, the results file."""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from imgedit.edit import EditOptions
from imgedit.media.images import decode_image
from imgedit.media.sizing import Size
from imgedit.model.families import family_class_for
from imgedit.model.families.base import Family
from imgedit.model.spec import Defaults
from imgedit.weights.loader import load_model
from imgedit.weights.options import LoadOptions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks.md"
PROMPT = "make the sky a deep orange"
SEED = 1234


def machine() -> str:
    """One line naming the date, CPU, memory, GPU and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    versions = ", ".join(f"{package} {_version(package)}" for package in ("torch", "diffusers", "bentoml"))
    return (
        f"{date.today()}, {cpu} ({os.cpu_count()} cores, {memory:.0f} GiB), {gpu}, "
        f"Python {platform.python_version()}, {versions}, torch threads {torch.get_num_threads()}"
    )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # the GPU benchmark needs no BentoML
        return "not installed"


def command_line() -> str:
    """How this script was run, as a command to paste."""
    script = Path(sys.argv[0]).resolve()
    if not script.is_relative_to(ROOT / "bench"):  # called from elsewhere, a test for one
        return " ".join(sys.argv)
    module = script.relative_to(ROOT).with_suffix("")
    return " ".join([".venv/bin/python -m", ".".join(module.parts), *sys.argv[1:]])


def seconds(run: Callable[[], object]) -> float:
    """Wall-clock seconds ``run()`` takes."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0..1) of ``values``, interpolated linearly."""
    return float(np.quantile(np.asarray(values, dtype=float), share))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with smooth shading and fine grain: it compresses about as well as a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 100 * np.sin(x / (width / 3.1) + phase) * np.cos(y / (height / 2.3) - phase) for phase in (0.0, 1.3, 2.6)
    ]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, title: str, body: str, write: Path | None) -> None:
    """Print a result and, with ``write``, put it into that Markdown file as section ``name``.

    The section sits between ``<!-- bench:NAME -->`` markers and is replaced
    on every run; text around it is kept.
    """
    command = f"<!-- benchmark -->\n```bash\n{command_line()}\n```"
    section = f"<!-- bench:{name} -->\n## {title}\n\n{command}\n\n{machine()}\n\n{body.strip()}\n"
    section += f"<!-- /bench:{name} -->"
    print(section)
    if write is None:
        return
    text = write.read_text() if write.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    text, replaced = pattern.subn(lambda _: section, text)
    if not replaced:
        text = text.rstrip() + "\n\n" + section + "\n"
    write.write_text(text)


def load_family(model: str, steps: int) -> Family:
    """``model`` loaded in this process as the server loads it, with its family."""
    loaded = load_model(LoadOptions(model=model))
    return family_class_for(loaded.pipeline)(loaded.pipeline, overrides=Defaults(steps=steps))


def direct_edit(family: Family, upload: bytes, size: int, n: int, steps: int) -> Callable[[], object]:
    """The pipeline calls the server makes for this edit request, as a function of no arguments.

    The server's own family plans them, so the arguments are the server's, and
    they run as the server runs them (under ``torch.inference_mode``, which on
    its own makes a call a few percent faster than diffusers' default
    ``no_grad``): what is left between the two is the cost of serving. The
    images come back as PIL images, as a script calling diffusers gets them.
    """
    image = decode_image(upload, "image", 10**9)
    options = EditOptions(prompt=PROMPT, n=n, num_inference_steps=steps, seed=SEED)
    plan = family.plan(family.resolve(options, [image], Size(size, size)))

    def run() -> object:
        return [call.invoke() for call in plan.calls]

    return run


def edit_form(size: int, n: int, output_format: str, steps: int) -> dict[str, str]:
    """The multipart text fields of the same request."""
    return {
        "prompt": PROMPT,
        "size": f"{size}x{size}",
        "n": str(n),
        "output_format": output_format,
        "num_inference_steps": str(steps),
        "seed": str(SEED),
    }


def peak_rss(pid: int) -> int:
    """Highest resident set size of process ``pid`` since start or the last :func:`reset_peak_rss`, in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` now, in bytes."""
    return _status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> None:
    """Start the peak RSS of ``pid`` over from its current RSS (Linux: ``5`` into ``clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/{pid}/status")
    return int(match.group(1))
