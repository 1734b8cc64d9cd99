"""LiteLLM's router with the model list of ``deploy/kubernetes/per-model/litellm.yaml``: each edit goes to the
server of the model it names. The catalog server (every tiny family in one server) stands in for each model's
Service: every entry's ``api_base`` points at it, and the model it passes on is one the catalog serves."""

from __future__ import annotations

import asyncio
import os

import pytest
import yaml

from tests.deploy.support import KUBERNETES
from tests.helpers import gradient_png
from tests.integration.clients.shapes import picture

pytestmark = pytest.mark.integration

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price list from the internet
litellm = pytest.importorskip("litellm")

#: Each model of the per-model example, and the catalog's tiny model standing in for it.
STAND_INS = {"qwen-image-edit-2511": "qwen-image-edit-plus", "flux2-klein-4b": "flux2-klein"}


def test_the_router_sends_each_edit_to_the_model_it_names(catalog, monkeypatch):
    config = yaml.safe_load((KUBERNETES / "per-model" / "litellm.yaml").read_text())
    monkeypatch.setenv("IMGEDIT_API_KEY", "unused")  # the file takes the models' key from the environment
    for entry in config["model_list"]:
        params = entry["litellm_params"]
        params["api_base"] = f"{catalog.url}/v1"
        params["model"] = f"openai/{STAND_INS[entry['model_name']]}"
    router = litellm.Router(model_list=config["model_list"])
    for name, stand_in in STAND_INS.items():
        answer = asyncio.run(router.aimage_edit(model=name, image=gradient_png(64, 64), prompt="snow", size="64x64"))
        assert picture(answer.data[0].b64_json).size == (64, 64)
        assert catalog.wait_for_log(f"model={stand_in} n=1 size=64x64")
