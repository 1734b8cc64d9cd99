"""``bentoml build`` of this tree with a tiny model from the store, offline, then ``bentoml serve <tag>``.

Everything happens in a temporary BENTOML_HOME, so the user's store is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from devtools.server import ROOT, serve_on_a_free_port, server_environment, stop
from tests.integration.test_docs_examples import example, wait_for_image

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def offline_prefix() -> list[str]:
    """``unshare -n`` (no network at all) where this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def build_bento(environment: dict[str, str], *build_arguments: str) -> str:
    """``bentoml build`` of this repository with no network, into ``environment``'s store; returns the tag."""
    built = subprocess.run(
        [*offline_prefix(), str(BIN / "bentoml"), "build", *build_arguments, "--output", "tag"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return re.search(r"(imgedit:[a-z0-9]+)", built.stdout).group(1)


#: The store models the Bento serves (IMGEDIT_MODELS), the first the default.
STORED = ("tiny-ip2p", "tiny-ip2p-copy")
MODELS_ARGUMENT = "models=" + ",".join(f"bentoml:{name}" for name in STORED)


@pytest.fixture(scope="module")
def bento(tmp_path_factory):
    from imgedit.model.tiny import build_tiny

    home = tmp_path_factory.mktemp("bento-home")
    saved = tmp_path_factory.mktemp("saved") / "ip2p"
    build_tiny("tiny:instruct-pix2pix").pipeline.save_pretrained(saved)
    environment = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}
    environment = {key: value for key, value in environment.items() if not key.startswith("IMGEDIT_")}
    for name in STORED:
        imported = subprocess.run(
            [str(BIN / "imgedit"), "import-model", str(saved), "--name", name, "--quiet"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert imported.returncode == 0, imported.stderr
    return home, build_bento(environment, "--arg", MODELS_ARGUMENT)


def test_the_bento_carries_the_model_its_arguments_and_only_the_sources(bento):
    home, tag = bento
    name, version = tag.split(":")
    root = home / "bentos" / name / version
    info = yaml.safe_load((root / "bento.yaml").read_text())
    (service,) = info["services"]
    assert sorted(model["tag"].split(":")[0] for model in service["models"]) == list(STORED)
    assert info["args"] == {"models": MODELS_ARGUMENT.removeprefix("models=")}
    sources = {path.relative_to(root / "src").parts[0] for path in (root / "src").rglob("*")}
    assert sources == {"service.py", "imgedit", "README.md", "bentofile.yaml", "deploy"}
    # Of the deployment files, only the speed-tier examples, which IMGEDIT_PRESETS may name inside the Bento.
    shipped = {path.relative_to(root / "src") for path in (root / "src" / "deploy").rglob("*") if path.is_file()}
    assert shipped == {Path("deploy/presets/qwen-image-edit-2511.yaml")}
    playground = root / "src" / "imgedit" / "playground"
    assert {path.name for path in playground.iterdir() if path.is_file()} == {
        "__init__.py",
        "index.html",
        "playground.js",
        "playground.css",
    }
    assert "torchvision" in (root / "env" / "python" / "requirements.txt").read_text()


def test_serving_the_tag_answers_the_spec_curl_example(bento, tmp_path):
    home, tag = bento
    environment = server_environment(tmp_path, BENTOML_HOME=str(home))
    del environment["IMGEDIT_MODEL"]  # the Bento says which model
    server = serve_on_a_free_port(
        lambda port: [str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
        environment,
        tmp_path / "bento.log",
        cwd=tmp_path,
    )
    try:
        shutil.copytree(ROOT / "examples", tmp_path / "examples")
        command = (
            example("curl-single")
            .replace("http://localhost:3000", server.url)
            .replace("model=qwen-image-edit-plus", "model=tiny-ip2p")
        )
        completed = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr
        image = wait_for_image(tmp_path / "gift-basket.png")
        assert isinstance(image, Image.Image) and image.size == (256, 256)
        assert "x-request-id" in completed.stderr.lower()
        assert "serving bentoml:tiny-ip2p as 'tiny-ip2p'" in server.log()
        assert "also serving bentoml:tiny-ip2p-copy" in server.log()
        assert httpx.get(f"{server.url}/playground/playground.js").headers["content-type"].startswith("text/javascript")
    finally:
        stop(server.process)
