"""The build files agree with each other and with the installed BentoML."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PLAYGROUND_FILES = ("index.html", "playground.js", "playground.css")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_bentofile_packages_match_pyproject():
    runtime = {str(Requirement(line)) for line in pyproject()["project"]["dependencies"]}
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    packaged = {str(Requirement(line)) for line in bento["python"]["packages"]}
    assert packaged - runtime == {"torchvision"}
    assert runtime <= packaged


def test_installed_bentoml_is_in_the_tested_range():
    (bentoml,) = [Requirement(line) for line in pyproject()["project"]["dependencies"] if line.startswith("bentoml")]
    assert version("bentoml") in SpecifierSet(str(bentoml.specifier))


def test_the_wheel_carries_the_playground_files(tmp_path):
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the tree
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "imgedit", source / "imgedit", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("imgedit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"imgedit/playground/{name}" for name in PLAYGROUND_FILES} <= names


def test_the_bentofile_includes_the_playground_files():
    from bentoml._internal.bento.build_config import BentoPathSpec

    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    specs = BentoPathSpec(bento["include"], bento["exclude"], str(ROOT))  # what `bentoml build` copies
    for name in PLAYGROUND_FILES:
        assert specs.includes(f"imgedit/playground/{name}"), name
