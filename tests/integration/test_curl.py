"""curl shapes beyond the docs': large uploads (``Expect: 100-continue``) and ``image[]``."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def curl(*arguments: str) -> tuple[dict, str]:
    completed = subprocess.run(
        ["curl", "-sS", "-D", "/dev/stderr", *arguments], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(completed.stdout), completed.stderr


def test_large_upload_with_expect_100_continue(server, tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    path = tmp_path / "large.png"
    Image.fromarray(noise).save(path, compress_level=0)
    assert path.stat().st_size > 2 * 1024 * 1024
    body, headers = curl(
        "-X", "POST", f"{server.url}/v1/images/edits",
        "-F", f"image=@{path}", "-F", "prompt=shrink", "-F", "size=64x64",
    )  # fmt: skip
    assert "100 Continue" in headers
    assert body["size"] == "64x64" and len(body["data"]) == 1


def test_image_brackets_from_curl(server, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    body, headers = curl(
        "-X", "POST", f"{server.url}/v1/images/edits",
        "-F", f"image[]=@{path}", "-F", f"image[]=@{path}", "-F", "prompt=two", "-F", "n=2",
    )  # fmt: skip
    assert len(body["data"]) == 2
    assert "x-imgedit-seeds:" in headers.lower()
