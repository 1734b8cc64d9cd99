"""Several models behind one endpoint (``IMGEDIT_MODELS``), on a real server: each answers as if alone."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from devtools.server import start_server, stop
from tests.helpers import gradient_png
from tests.integration.conftest import CATALOG_RESIDENT, FAMILIES

pytestmark = pytest.mark.integration

#: The families compared byte for byte with a server of that model alone (the first is the shared server's).
COMPARED = ("qwen-image-edit-plus", "flux2-klein", "stable-diffusion-inpaint")


def edit(url: str, model: str | None, seed: str = "5", prompt: str = "make it blue") -> httpx.Response:
    fields = {"prompt": prompt, "size": "64x64", "seed": seed, "num_inference_steps": "3"}
    answer = httpx.post(
        f"{url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data={**fields, **({"model": model} if model else {})},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    return answer


@pytest.fixture(scope="module")
def alone(server, tmp_path_factory):
    """A server of each compared family alone; the shared server is the first."""
    started = {tiny: start_server(tmp_path_factory.mktemp(tiny), IMGEDIT_MODEL=f"tiny:{tiny}") for tiny in COMPARED[1:]}
    yield {COMPARED[0]: server, **started}
    for running in started.values():
        stop(running.process)


@pytest.mark.parametrize("tiny", COMPARED)
def test_each_model_answers_as_a_server_of_it_alone(catalog, alone, tiny):
    served = FAMILIES[tiny][0]
    together = edit(catalog.url, served).json()["data"][0]["b64_json"]
    assert together == edit(alone[tiny].url, None).json()["data"][0]["b64_json"]


def test_a_request_without_model_goes_to_the_first(catalog):
    first = FAMILIES["qwen-image-edit-plus"][0]
    assert edit(catalog.url, None).json()["data"] == edit(catalog.url, first).json()["data"]


def test_the_model_list_has_every_model_then_the_loras_and_the_sdk_picks_one(catalog):
    cards = httpx.get(f"{catalog.url}/v1/models").json()["data"]
    assert [card["id"] for card in cards] == [served for served, _, _ in FAMILIES.values()] + ["anime"]
    assert sum(card["on_device"] is True for card in cards) == CATALOG_RESIDENT
    assert (cards[-1]["parent"], cards[-1]["on_device"]) == ("flux2-klein", None)
    client = openai.OpenAI(base_url=f"{catalog.url}/v1", api_key="unused")
    for served in ("flux2-klein", "instruct-pix2pix"):
        answer = client.images.edit(
            model=served, image=("a.png", gradient_png(64, 64), "image/png"), prompt="p", size="64x64"
        )
        assert answer.data[0].b64_json
        assert catalog.wait_for_log(f"model={served} n=1 size=64x64")


def test_an_unknown_model_is_a_400_listing_every_model(catalog):
    refused = httpx.post(
        f"{catalog.url}/v1/images/edits", files=[("image", gradient_png())], data={"prompt": "p", "model": "nope"}
    )
    error = refused.json()["error"]
    assert refused.status_code == 400 and error["param"] == "model" and error["code"] == "model_not_found"
    assert all(repr(served) in error["message"] for served, _, _ in FAMILIES.values())


def swaps(url: str) -> dict[str, float]:
    """``imgedit_model_swaps_total`` by model."""
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'^imgedit_model_swaps_total\{model="([^"]+)"\} (\S+)$', text, re.M)
    return {model: float(value) for model, value in found}


def test_interleaved_requests_for_three_models_all_succeed_as_alone_and_swap(catalog):
    """Three models, two on the device at once: interleaved concurrent requests swap models in, and every image is
    the one each model gives alone."""
    names = [FAMILIES[tiny][0] for tiny in COMPARED]
    expected = {name: edit(catalog.url, name, seed="9").json()["data"] for name in names}
    before = swaps(catalog.url)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda name: (name, edit(catalog.url, name, seed="9").json()["data"]), names * 3))
    assert all(data == expected[name] for name, data in answers)
    after = swaps(catalog.url)
    assert sum(after.values()) > sum(before.values())
    assert set(after) >= set(names)
    assert catalog.wait_for_log("swapped in ")


def test_a_lora_belongs_to_its_model_and_naming_it_picks_that_model(catalog):
    plain = edit(catalog.url, "flux2-klein").json()["data"]
    through_model = edit(catalog.url, "anime").json()["data"]
    assert through_model != plain
    chosen = httpx.post(
        f"{catalog.url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data={"prompt": "make it blue", "size": "64x64", "seed": "5", "num_inference_steps": "3"}
        | {"model": "flux2-klein", "lora": "anime"},
        timeout=120,
    )
    assert chosen.json()["data"] == through_model
    elsewhere = httpx.post(
        f"{catalog.url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data={"prompt": "p", "size": "64x64", "model": "qwen-image-edit-plus", "lora": "anime"},
        timeout=120,
    )
    assert elsewhere.status_code == 400 and elsewhere.json()["error"]["param"] == "lora"


def test_a_background_job_runs_on_the_model_it_names(catalog):
    fields = {"prompt": "make it blue", "size": "64x64", "seed": "5", "num_inference_steps": "3"}
    fields["model"] = "flux2-klein"
    accepted = httpx.post(
        f"{catalog.url}/v1/images/edits",
        files=[("image", gradient_png(64, 64))],
        data=fields,
        headers={"Prefer": "respond-async"},
        timeout=120,
    )
    job = accepted.json()
    assert accepted.status_code == 202 and job["model"] == "flux2-klein"
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{catalog.url}/v1/images/edits/{job['id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline and job["status"] in ("queued", "in_progress"), job
        time.sleep(0.05)
    assert job["model"] == "flux2-klein" and job["data"] == edit(catalog.url, "flux2-klein").json()["data"]


def test_a_models_own_speed_tiers_run_for_it_alone(catalog):
    """flux2-klein's presets file gives it a low tier (one step, with its LoRA); the first model has none."""
    fields = {"prompt": "make it blue", "size": "64x64", "seed": "5"}

    def images(**more: str) -> httpx.Response:
        return httpx.post(
            f"{catalog.url}/v1/images/edits",
            files=[("image", gradient_png(64, 64))],
            data=fields | more,
            timeout=120,
        )

    low = images(model="flux2-klein", quality="low").json()
    assert low["quality"] == "low"
    assert low["data"] == images(model="flux2-klein", num_inference_steps="1", lora="anime").json()["data"]
    first = images(model="qwen-image-edit-plus", quality="low", num_inference_steps="2").json()
    assert first["data"] == images(model="qwen-image-edit-plus", num_inference_steps="2").json()["data"]
