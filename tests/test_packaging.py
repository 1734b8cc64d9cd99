"""The build files agree with each other and with the installed BentoML."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


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


def test_edits_input_overrides_bentomls_request_hook():
    from _bentoml_sdk.io_models import IOMixin

    from imgedit.api_io import EditsInput

    assert EditsInput.from_http_request.__func__ is not IOMixin.from_http_request.__func__
