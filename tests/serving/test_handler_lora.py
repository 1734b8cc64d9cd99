"""LoRAs through the request path: chosen per request, by ``lora`` or ``model``, loaded and unloaded."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import torch

from devtools.lora_files import write_lora
from imgedit.api.errors import ApiError
from imgedit.config import Settings
from imgedit.errors import RequestError
from imgedit.lora.admin import LoraAdmin
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import spec_in_directory
from imgedit.lora.sync import OK, LoraSync
from imgedit.media.fetch import Fetcher, FetchPolicy
from imgedit.model.call import PipelineCall
from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
from imgedit.model.spec import Defaults
from imgedit.scheduling.engine import Engine
from imgedit.serving.handler import EditHandler
from imgedit.serving.recipe import PreparedModel
from imgedit.serving.worker import Worker
from imgedit.weights.loader import LoadedModel
from tests.helpers import form_request, gradient_png

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def lora_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("loras")
    for seed, name in enumerate(("ink", "light", "extra"), start=1):
        write_lora(tiny_model.pipeline, directory / name, seed)
    return directory


@pytest.fixture
def served(tiny_model, lora_dir):
    """A handler whose engine switches LoRAs, with ``ink`` (scale 0.8) and ``light`` loaded."""
    settings = Settings(model="tiny:qwen-image-edit-plus", lora_dir=str(lora_dir), max_loras=3)
    family = QwenImageEditPlusFamily(tiny_model.pipeline, overrides=Defaults(steps=2), native_pixels=64 * 64)
    registry = LoraRegistry(family.loaded, max_loras=settings.max_loras)
    engine = Engine(prepare=registry.activate, previewer=family.preview)
    for name, scale in (("ink", 0.8), ("light", 1.0)):
        engine.between_runs(lambda n=name, s=scale: registry.load(n, spec_in_directory(str(lora_dir), n, s))).result()
    lora_admin = LoraAdmin(registry, engine, settings.lora_dir)
    yield EditHandler(settings, family, engine, Fetcher(FetchPolicy()), lora_admin)
    for name in registry.names():
        registry.retire(name)
        engine.between_runs(lambda n=name: registry.unload(n)).result()
    engine.close()


@pytest.fixture
def worker(served, tiny_model):
    """The worker around ``served``: the model list and the LoRA endpoints."""
    loaded = LoadedModel(
        pipeline=tiny_model.pipeline,
        model_id="tiny:qwen-image-edit-plus",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    model = PreparedModel(loaded=loaded, family=served.family, options=())
    return Worker(served_name="qwen-image-edit-plus", model=model, engine=served.engine, handler=served)


async def edit(handler: EditHandler, seed: int = 5, **fields: str) -> tuple[int, dict]:
    parts = [("image", gradient_png(64, 64)), ("prompt", "p"), ("seed", str(seed)), *fields.items()]
    response = await handler.handle(form_request(*parts))
    return response.status_code, json.loads(response.body)


def picture(body: dict) -> str:
    return body["data"][0]["b64_json"]


async def test_a_request_without_a_lora_after_one_with_is_exactly_the_base_model(served):
    _, before = await edit(served)
    _, inked = await edit(served, lora="ink")
    _, after = await edit(served)
    assert picture(inked) != picture(before)
    assert picture(after) == picture(before)


async def test_concurrent_requests_with_mixed_loras_each_get_what_they_get_alone(served):
    choices = ["", "ink", "light", "ink:0.3", "ink,light:0.5", ""]
    alone = [
        picture((await edit(served, lora=choice))[1]) if choice else picture((await edit(served))[1])
        for choice in choices
    ]
    together = await asyncio.gather(*(edit(served, lora=choice) if choice else edit(served) for choice in choices))
    assert [picture(body) for _, body in together] == alone
    assert len(set(alone)) == len(choices) - 1  # only the two plain requests agree


async def test_model_may_name_a_lora_at_its_loaded_scale(served, worker):
    _, by_model = await edit(served, model="ink")
    _, by_lora = await edit(served, lora="ink:0.8")
    assert picture(by_model) == picture(by_lora)
    cards = worker.models()
    assert [(card.id, card.parent) for card in cards] == [
        ("qwen-image-edit-plus", None),
        ("ink", "qwen-image-edit-plus"),
        ("light", "qwen-image-edit-plus"),
    ]


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"lora": "nope"}, "lora", "lora_not_found"),
        ({"lora": "ink:lots"}, "lora", "invalid_value"),
        ({"model": "nope"}, "model", "model_not_found"),
        ({"lora": '{"name": "x", "path": "../escape"}'}, "lora", "invalid_value"),
    ],
)
async def test_unknown_or_bad_loras_are_a_400(served, fields, param, code):
    status, body = await edit(served, **fields)
    assert (status, body["error"]["param"], body["error"]["code"]) == (400, param, code)


async def test_a_path_under_the_lora_directory_is_loaded_on_first_use(served):
    status, body = await edit(served, lora='{"lora_path": "extra", "scale": 0.5}')
    assert status == 200, body
    assert "extra" in served.loras.names()
    assert picture(body) == picture((await edit(served, lora="extra:0.5"))[1])


async def test_load_and_unload_with_the_cap(worker, lora_dir):
    with pytest.raises(ApiError) as exists:
        await worker.load_lora("ink", "ink")
    assert (exists.value.status, exists.value.code) == (400, "lora_exists")
    assert (await worker.load_lora("extra", "extra"))["status"] == "loaded"
    with pytest.raises(ApiError) as full:
        await worker.load_lora("more", "light")
    assert (full.value.status, full.value.code) == (400, "too_many_adapters")
    assert (await worker.unload_lora("extra"))["status"] == "unloaded"
    with pytest.raises(ApiError) as gone:
        await worker.unload_lora("extra")
    assert gone.value.status == 404


async def test_a_command_only_some_workers_applied_is_a_500_or_a_504(worker):
    worker.lora_admin.sync = LoraSync(worker.lora_admin.apply, worker=0, workers=2)
    with pytest.raises(ApiError) as silent:  # worker 1 never answers
        await worker.load_lora("extra", "extra")
    assert (silent.value.status, silent.value.code) == (504, "lora_partly_applied")
    assert "workers [1] did not confirm" in silent.value.message

    async def refused_on_worker_1(command):
        return {0: OK, 1: "no room left"}

    worker.lora_admin.sync.submit = refused_on_worker_1
    with pytest.raises(ApiError) as refused:
        await worker.unload_lora("extra")
    assert (refused.value.status, refused.value.code) == (500, "lora_partly_applied")
    assert "failed on workers [1] (no room left)" in refused.value.message


async def test_unloading_waits_for_the_requests_admitted_with_the_lora(served, monkeypatch):
    reached, release = threading.Event(), threading.Event()
    invoke = PipelineCall.invoke

    def held_at_the_first_step(call, on_step=None):
        def step(index, total, latents):
            if index == 0 and not release.is_set():
                reached.set()
                release.wait(timeout=60)
            on_step(index, total, latents)

        return invoke(call, step)

    _, expected = await edit(served, lora="light")
    monkeypatch.setattr(PipelineCall, "invoke", held_at_the_first_step)
    running = asyncio.ensure_future(edit(served, lora="light"))
    assert await asyncio.to_thread(reached.wait, 60)
    unloading = asyncio.ensure_future(served.lora_admin.unload("light"))
    while "light" in served.loras.names():  # refused to new requests at once
        await asyncio.sleep(0.01)
    status, body = await edit(served, lora="light", seed=6)
    assert (status, body["error"]["code"]) == (400, "lora_not_found")
    assert not unloading.done()  # the admitted request still runs with it
    release.set()
    status, body = await running
    assert status == 200 and picture(body) == picture(expected)
    assert (await unloading)["status"] == "unloaded"


async def test_a_name_another_model_means_is_refused_and_a_model_without_paths_says_why(worker, served):
    """Several models (IMGEDIT_MODELS): a LoRA loaded while serving may not take a served model's name or another
    model's LoRA's; a model whose LoRAs are fixed refuses paths, saying so."""
    served.loras.reserved = frozenset({"klein", "anime"})
    try:
        for name in ("klein", "anime"):
            with pytest.raises(ApiError) as taken:
                await worker.load_lora(name, "extra")
            assert (taken.value.status, taken.value.code) == (400, "lora_exists")
            assert "taken by a served model or another model's adapter" in taken.value.message
    finally:
        served.loras.reserved = frozenset()
    fixed = LoraAdmin(served.loras, served.engine, None, no_paths="LoRA paths load on the first model only")
    with pytest.raises(RequestError, match="LoRA paths load on the first model only") as refused:
        await fixed.load("extra", "extra")
    assert refused.value.param == "lora_path"
