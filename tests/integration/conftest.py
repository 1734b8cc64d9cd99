"""The real ``bentoml serve`` processes the integration files share: one per set of settings more than one needs."""

from __future__ import annotations

import base64

import pytest

from devtools.lora_files import write_lora
from devtools.server import start_server, stop
from imgedit.model.tiny import build_tiny

#: The keys of the shared server that wants one (tests/integration/test_api_keys.py, the playground's key prompt).
API_KEYS = ("sk-first-4b1d", "sk-second-9c2e")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The tiny model with every default setting."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop(running.process)


#: The webhook secret of the keyed server.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"imgedit-test-webhook-secret-32b!").decode()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """The tiny model behind ``IMGEDIT_API_KEY`` (both of :data:`API_KEYS`), with what the job tests need
    (tests/integration/test_jobs.py): a webhook secret, local webhook receivers allowed, quick webhook
    retries, and a gate that holds a request whose prompt is ``gated`` at its second step."""
    directory = tmp_path_factory.mktemp("keys")
    running = start_server(
        directory,
        hooks=True,
        TEST_STEP_GATE=str(directory / "gate"),
        TEST_STEP_GATE_AT="1",
        TEST_WEBHOOK_DELAYS="0.1,0.1,0.1",
        IMGEDIT_API_KEY=",".join(API_KEYS),
        IMGEDIT_WEBHOOK_SECRET=WEBHOOK_SECRET,
        IMGEDIT_URL_ALLOW_PRIVATE="true",
    )
    running.gate = directory / "gate"  # type: ignore[attr-defined]
    yield running
    stop(running.process)


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


#: Models of the catalog server on the device at once.
CATALOG_RESIDENT = 2


@pytest.fixture(scope="session")
def catalog(tmp_path_factory):
    """One server of every tiny family (``IMGEDIT_MODELS``), each under its family's name, the default first; two
    of them on the device at once (:data:`CATALOG_RESIDENT`), and on ``flux2-klein`` the LoRA ``anime`` and a
    low tier of one step with it."""
    directory = tmp_path_factory.mktemp("catalog")
    anime = write_lora(build_tiny("tiny:flux2-klein").pipeline, directory / "anime", seed=3)
    (directory / "klein-tiers.yaml").write_text("low:\n  num_inference_steps: 1\n  lora: anime\n")
    models = ",".join(f"{served}=tiny:{tiny}" for tiny, (served, _, _) in FAMILIES.items())
    # IMGEDIT_MODEL empty: unset (the test servers set it by default, and the two are not set together).
    running = start_server(
        directory,
        IMGEDIT_MODEL="",
        IMGEDIT_MODELS=models,
        IMGEDIT_RESIDENT_MODELS=str(CATALOG_RESIDENT),
        IMGEDIT_LORA_ADAPTERS=f"flux2-klein/anime={anime}",
        IMGEDIT_PRESETS=f"flux2-klein={directory / 'klein-tiers.yaml'}",
    )
    yield running
    stop(running.process)
