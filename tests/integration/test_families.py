"""Every tiny model family on a real server: an edit, a multi-image edit where the family takes several, a mask.

All twelve are served by one server (``IMGEDIT_MODELS``), each request naming its
model; tests/integration/test_models.py shows that such a server answers exactly
as a server of one model does.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devtools.server import start_server, stop
from tests.helpers import gradient_png
from tests.integration.conftest import FAMILIES

pytestmark = pytest.mark.integration

GREEN = (20, 180, 40)


def green_png(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, GREEN).save(buffer, format="PNG")
    return buffer.getvalue()


def left_half_mask(size=(96, 64)) -> bytes:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def images_of(response: httpx.Response) -> list[Image.Image]:
    assert response.status_code == 200, response.text
    return [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in response.json()["data"]]


@pytest.mark.parametrize("tiny", sorted(FAMILIES))
def test_family_serves_edits_and_masks(tiny, catalog):
    served, max_images, mask_mode = FAMILIES[tiny]
    server = catalog
    model = {"model": served}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert served in [card["id"] for card in http.get("/v1/models").json()["data"]]
        edited = images_of(
            http.post(
                "/v1/images/edits",
                files=[("image", gradient_png(96, 64))],
                data={"prompt": "make it blue", "n": "2", "size": "64x64", "output_format": "jpeg", **model},
            )
        )
        assert [(image.format, image.size) for image in edited] == [("JPEG", (64, 64))] * 2
        if max_images > 1:
            several = [("image[]", gradient_png(64, 64)) for _ in range(max_images)]
            multi = images_of(
                http.post("/v1/images/edits", files=several, data={"prompt": "p", "size": "64x64", **model})
            )
            assert [(image.format, image.size) for image in multi] == [("PNG", (64, 64))]
        else:
            too_many = http.post(
                "/v1/images/edits",
                files=[("image", green_png()), ("image", green_png())],
                data={"prompt": "p", **model},
            )
            assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_images"
        masked = http.post(
            "/v1/images/edits",
            files=[("image", green_png()), ("mask", left_half_mask())],
            data={
                "prompt": "a red ball",
                "output_format": "webp",
                "output_compression": "100",
                "seed": "1",
                "size": "96x64",
                **model,
            },
        )
        (output,) = images_of(masked)
        assert (output.format, output.size) == ("WEBP", (96, 64))
        pixels = np.asarray(output.convert("RGB"), dtype=int)
        distance = np.abs(pixels - np.array(GREEN)).max(axis=2)
        assert distance[:, 60:].max() <= 6  # outside the mask: the original (lossless WebP)
        assert distance[:, :40].mean() > 10  # inside: edited
        assert server.wait_for_log(f"model={served} n=1 size=96x64 steps=")
        assert re.search(rf"model={re.escape(served)} n=1 size=96x64 steps=\d+ mask={mask_mode}", server.log())


def test_a_model_imported_into_the_store_is_served_from_it(tmp_path):
    """``imgedit import-model`` of a saved tiny pipeline, then ``IMGEDIT_MODEL=bentoml:NAME``."""
    from imgedit.model.tiny import build_tiny

    saved = tmp_path / "saved"
    build_tiny("tiny:instruct-pix2pix").pipeline.save_pretrained(saved)
    environment = {"BENTOML_HOME": str(tmp_path / "bentoml")}
    imported = subprocess.run(
        [str(Path(sys.executable).with_name("imgedit")), "import-model", str(saved), "--name", "ip2p", "--quiet"],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr
    server = start_server(tmp_path, IMGEDIT_MODEL="bentoml:ip2p", **environment)
    try:
        response = httpx.post(
            f"{server.url}/v1/images/edits",
            files=[("image", gradient_png(64, 64))],
            data={"prompt": "p", "num_inference_steps": "2"},
            timeout=120,
        )
        assert [image.size for image in images_of(response)] == [(64, 64)]
        assert "serving bentoml:ip2p" in server.log()
    finally:
        stop(server.process)
