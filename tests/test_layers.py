"""The package's shape: layers as packages, imports that run one way, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imgedit"
#: What each layer must not import (module name prefixes).
FORBIDDEN = {
    # The bottom: settings, errors, logs, metrics, the edit the model sees. It knows no layer above it
    # (settings may come from a Bento's arguments, through BentoML's documented ``use_arguments``).
    "": ("imgedit.api", "imgedit.media", "imgedit.model", "imgedit.serving", "starlette", "_bentoml", "torch"),
    # The command line is an entry point, like service.py: it may use any layer.
    "cli": (),
    # Pixels in and out: no HTTP server types, no torch, nothing above it.
    "media": ("imgedit.api", "imgedit.model", "imgedit.serving", "starlette", "bentoml", "torch", "diffusers"),
    # The model on its device: nothing of HTTP.
    "model": ("imgedit.api", "imgedit.serving", "starlette", "_bentoml", "bentoml._internal"),
    # The wire format: no model, no device, no BentoML.
    "api": ("imgedit.model", "imgedit.serving", "torch", "diffusers", "bentoml", "_bentoml"),
    # Serving uses every layer; only the seam reaches into BentoML (checked below).
    "serving": (),
    "playground": ("imgedit.model", "imgedit.serving", "torch", "bentoml"),
}
#: The one module allowed to use what BentoML does not document.
SEAM = PACKAGE / "serving" / "bentoml_seam.py"
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if parts == ("cli.py",):
        return "cli"
    return parts[0] if len(parts) > 1 else ""


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    forbidden = FORBIDDEN[layer(path)]
    wrong = sorted(name for name in imported(path) if any(_within(name, prefix) for prefix in forbidden))
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {wrong}"


def test_only_the_seam_uses_bentoml_internals_or_request_hooks():
    for path in modules():
        if path == SEAM:
            continue
        text = path.read_text()
        internal = [name for name in imported(path) if name.startswith(("_bentoml", "bentoml._internal"))]
        assert not internal and "from_http_request" not in text, path.relative_to(PACKAGE)


def test_the_architecture_shows_in_the_top_level():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    packages = sorted(path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file())
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    assert packages == ["api", "media", "model", "playground", "serving"]


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_long(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_tests_mirror_the_packages():
    tests = Path(__file__).resolve().parent
    for package in ("api", "media", "model", "serving"):
        assert (tests / package / "__init__.py").is_file(), package


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".") or (prefix.startswith("_") and name.startswith(prefix))
