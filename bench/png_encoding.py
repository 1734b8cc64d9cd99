"""PNG encoding of one output image: Pillow at level 1, Pillow at level 1 with zlib's RLE, and ``imgedit.media.png``.

Each encoder writes the same photo-like image in turn, rotating the order each
round; the table gives the median time and the file size, and checks every
file decodes to the same pixels.

    python -m bench.png_encoding --sides 512 1024 --runs 20
"""

from __future__ import annotations

import argparse
import io
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from bench.common import median, photo_like, report, table
from imgedit.media.png import encode_png


def pillow(image: Image.Image, **options: int) -> Callable[[], bytes]:
    def encode() -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", **options)
        return buffer.getvalue()

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--write", type=Path, help="put the results into this Markdown file")
    arguments = parser.parse_args()

    rows = []
    for side in arguments.sides:
        image = photo_like(side, side)
        encoders = {
            "Pillow, level 1": pillow(image, compress_level=1),
            "Pillow, level 1, RLE": pillow(image, compress_level=1, compress_type=zlib.Z_RLE),
            "imgedit.media.png": lambda image=image: encode_png(image, 1),
        }
        names = list(encoders)
        timings: dict[str, list[float]] = {name: [] for name in names}
        sizes = {}
        for index in range(arguments.runs + 1):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                data = encoders[name]()
                if index:  # the first round warms up
                    timings[name].append(time.perf_counter() - started)
                sizes[name] = len(data)
                assert Image.open(io.BytesIO(data)).tobytes() == image.tobytes()
        base = median(timings[names[0]])
        for name in names:
            rows.append(
                (
                    f"{side}x{side}",
                    name,
                    f"{median(timings[name]) * 1000:.1f}",
                    f"{base / median(timings[name]):.2f}x",
                    f"{sizes[name] / 1024:.0f}",
                )
            )
    body = f"A photo-like RGB image, median of {arguments.runs} rotating rounds.\n\n" + table(
        ("size", "encoder", "ms", "speed-up", "KiB"), rows
    )
    report("png-encoding", "PNG encoding", body, arguments.write)


if __name__ == "__main__":
    main()
