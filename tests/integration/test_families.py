"""One real server per tiny model family: an edit, a multi-image edit where the family takes several, and a mask."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devtools.server import start_server, stop
from imgedit.model.tiny import TINY_DEFAULT
from tests.helpers import gradient_png

pytestmark = pytest.mark.integration

#: tiny model -> (served name, input images the family takes, mask handling)
FAMILIES = {
    "qwen-image-edit-plus": ("qwen-image-edit-plus", 4, "composite"),
    "qwen-image-edit": ("qwen-image-edit", 1, "native"),
    "qwen-image-edit-inpaint": ("qwen-image-edit-inpaint", 1, "native"),
    "flux-kontext": ("flux-kontext", 1, "native"),
    "flux-kontext-inpaint": ("flux-kontext-inpaint", 1, "native"),
    "flux2": ("flux2", 3, "composite"),
    "flux2-klein": ("flux2-klein", 3, "native"),
    "flux2-klein-inpaint": ("flux2-klein-inpaint", 3, "native"),
    "instruct-pix2pix": ("instruct-pix2pix", 1, "composite"),
    "sdxl-instruct-pix2pix": ("sdxl-instruct-pix2pix", 1, "composite"),
    "stable-diffusion": ("stable-diffusion", 1, "native"),
    "stable-diffusion-inpaint": ("stable-diffusion-inpaint", 1, "native"),
}
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
def test_family_serves_edits_and_masks(tiny, tmp_path, request):
    served, max_images, mask_mode = FAMILIES[tiny]
    # The session's shared server serves the default tiny model already.
    shared = f"tiny:{tiny}" == TINY_DEFAULT
    server = request.getfixturevalue("server") if shared else start_server(tmp_path, IMGEDIT_MODEL=f"tiny:{tiny}")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            assert [model["id"] for model in http.get("/v1/models").json()["data"]] == [served]
            edited = images_of(
                http.post(
                    "/v1/images/edits",
                    files=[("image", gradient_png(96, 64))],
                    data={"prompt": "make it blue", "n": "2", "size": "64x64", "output_format": "jpeg"},
                )
            )
            assert [(image.format, image.size) for image in edited] == [("JPEG", (64, 64))] * 2
            if max_images > 1:
                several = [("image[]", gradient_png(64, 64)) for _ in range(max_images)]
                multi = images_of(http.post("/v1/images/edits", files=several, data={"prompt": "p", "size": "64x64"}))
                assert [(image.format, image.size) for image in multi] == [("PNG", (64, 64))]
            else:
                too_many = http.post(
                    "/v1/images/edits", files=[("image", green_png()), ("image", green_png())], data={"prompt": "p"}
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
                },
            )
            (output,) = images_of(masked)
            assert (output.format, output.size) == ("WEBP", (96, 64))
            pixels = np.asarray(output.convert("RGB"), dtype=int)
            distance = np.abs(pixels - np.array(GREEN)).max(axis=2)
            assert distance[:, 60:].max() <= 6  # outside the mask: the original (lossless WebP)
            assert distance[:, :40].mean() > 10  # inside: edited
            assert server.wait_for_log(f"mask={mask_mode}")
    finally:
        if not shared:
            stop(server.process)


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
