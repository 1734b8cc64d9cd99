"""The deployment files stay consistent with the server they deploy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from imgedit.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_kubernetes_deployment_probes_gpu_and_settings():
    """The base Deployment as written (tests/deploy renders and validates every overlay with kubectl)."""
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # a large model loads for minutes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    names = {variable["name"] for variable in container["env"]}
    imgedit_names = {name.removeprefix("IMGEDIT_").lower() for name in names if name.startswith("IMGEDIT_")}
    assert imgedit_names <= set(Settings.model_fields)
    grace = next(int(v["value"]) for v in container["env"] if v["name"] == "IMGEDIT_SHUTDOWN_GRACE")
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + grace


def test_bentocloud_config_names_the_service_and_real_settings():
    config = yaml.safe_load((ROOT / "deploy" / "bentocloud.yaml").read_text())
    assert list(config["services"]) == ["imgedit"]
    for variable in config["envs"]:
        assert variable["name"].removeprefix("IMGEDIT_").lower() in Settings.model_fields


def test_scripts_are_valid_bash():
    for script in (ROOT / "scripts").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script
