"""The per-model variant (``deploy/kubernetes/per-model``): one imgedit per model behind LiteLLM's proxy, which routes
each edit by its ``model``. It renders offline, validates, and its parts agree: the router's model list names each
model's served name and Service, and each Service reaches only its own model's pods."""

from __future__ import annotations

from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import KUBERNETES, environment, render
from tests.deploy.test_kubernetes import KUBERNETES_VERSIONS

#: The models of the example, by the instance label of their pods.
MODELS = ("qwen", "klein")


def objects() -> tuple[dict, ...]:
    return render(".", folder="per-model")


def named(kind: str) -> dict[str, dict]:
    return {item["metadata"]["name"]: item for item in objects() if item["kind"] == kind}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_core_kubernetes_in_one_namespace(version):
    for item in objects():
        kubernetes_validate.validate(item, version, strict=True)
    assert {item["metadata"].get("namespace") for item in objects() if item["kind"] != "Namespace"} == {"imgedit"}
    assert list(named("Namespace")) == ["imgedit"]


def test_each_model_has_its_deployment_and_a_service_that_reaches_only_its_pods():
    deployments, services = named("Deployment"), named("Service")
    for model in MODELS:
        pods = deployments[f"imgedit-{model}"]["spec"]["template"]["metadata"]["labels"]
        selector = services[f"imgedit-{model}"]["spec"]["selector"]
        matching = [
            name
            for name, deployment in deployments.items()
            if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching == [f"imgedit-{model}"] and pods["app.kubernetes.io/instance"] == model
        (container,) = deployments[f"imgedit-{model}"]["spec"]["template"]["spec"]["containers"]
        assert environment(container)["IMGEDIT_MODEL"].startswith("/weights/")


def test_the_router_sends_each_served_name_to_its_models_service():
    config_map = next(item for name, item in named("ConfigMap").items() if name.startswith("imgedit-router"))
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    routes = {entry["model_name"]: entry["litellm_params"] for entry in config["model_list"]}
    served = {}
    for model in MODELS:
        (container,) = named("Deployment")[f"imgedit-{model}"]["spec"]["template"]["spec"]["containers"]
        served[environment(container)["IMGEDIT_SERVED_MODEL_NAME"]] = model
    assert set(routes) == set(served)
    for name, params in routes.items():
        address = urlparse(params["api_base"])
        assert address.hostname == f"imgedit-{served[name]}.imgedit.svc.cluster.local" and address.path == "/v1"
        assert params["model"] == f"openai/{name}"  # LiteLLM's OpenAI-compatible provider, passing the name on
        assert f"imgedit-{served[name]}" in named("Service")
    router = named("Deployment")["imgedit-router"]["spec"]["template"]["spec"]
    assert router["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    keys = {
        variable["valueFrom"]["secretKeyRef"]["name"]
        for variable in router["containers"][0]["env"]
        if "valueFrom" in variable
    }
    assert keys <= set(named("Secret"))


def test_the_variant_lists_every_model_folder():
    listed = yaml.safe_load((KUBERNETES / "per-model" / "kustomization.yaml").read_text())["resources"]
    assert [folder for folder in listed if (KUBERNETES / "per-model" / folder).is_dir()] == list(MODELS)
