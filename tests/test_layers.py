"""The package's shape: a package per layer or feature, one-way imports, small modules, one name per meaning."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imgedit"
#: The packages of imgedit and the ones each may import (the bottom modules, such as ``imgedit.errors``,
#: every one may). An import of any other imgedit package is against the direction.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    # The bottom: settings, errors, logs, metrics, the edit a request asks for. It knows no layer above it
    # (settings may come from a Bento's arguments, through BentoML's documented ``use_arguments``).
    "": (),
    # Pixels in and out.
    "media": (),
    # The model on its device: the call, the families, the tiny models, the acceleration options.
    "model": ("media",),
    # Features of the model: LoRAs and ranks; then the weights, which load a model with both.
    "lora": ("model",),
    "ranks": ("model", "media"),
    "weights": ("model", "media", "lora", "ranks"),
    # What runs when.
    "scheduling": ("model", "media"),
    # The wire format: no model, no device.
    "api": ("media",),
    # What outlives a connection: stored images, jobs, kept answers, webhooks (no HTTP routes, no model).
    "durable": ("media",),
    # Serving ties every layer to BentoML; the command line is an entry point like service.py.
    "serving": ("media", "model", "lora", "ranks", "weights", "scheduling", "api", "durable"),
    "cli": ("model", "weights"),
    "playground": (),
}
#: Libraries each layer must not import (module name prefixes).
FORBIDDEN_LIBRARIES = {
    "": ("starlette", "_bentoml", "torch"),
    "media": ("starlette", "bentoml", "torch", "diffusers"),
    "model": ("starlette", "_bentoml", "bentoml"),
    "lora": ("starlette", "_bentoml", "bentoml._internal"),
    "ranks": ("starlette", "_bentoml", "bentoml"),
    "weights": ("starlette", "_bentoml", "bentoml._internal"),
    "scheduling": ("starlette", "_bentoml", "bentoml"),
    "api": ("torch", "diffusers", "bentoml", "_bentoml"),
    "durable": ("starlette", "torch", "diffusers", "bentoml", "_bentoml"),
    "serving": (),
    "cli": (),
    "playground": ("torch", "bentoml"),
}
#: Only these read the server's settings; every other layer is handed small option objects.
SETTINGS_READERS = ("serving", "cli")
#: The one module allowed to use what BentoML does not document.
SEAM = PACKAGE / "serving" / "bentoml_seam.py"
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 400
#: Records with more fields than this are built with keywords only.
MAX_POSITIONAL_FIELDS = 4
#: Names with "adapter" in them that others fix: a setting (IMGEDIT_LORA_ADAPTERS) and diffusers' LoRA methods.
FIXED_ADAPTER_NAMES = {"lora_adapters", "set_adapters", "delete_adapters", "get_list_adapters"}
FIXED_ADAPTER_NAMES |= {"adapter_name", "adapter_names", "adapter_weights", "add_adapter"}  # their parameters, peft's


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


def imgedit_layer(name: str) -> str | None:
    """The layer an imported imgedit module belongs to ('' for the bottom modules); None outside imgedit."""
    parts = name.split(".")
    if parts[0] != "imgedit":
        return None
    if len(parts) == 1 or (PACKAGE / f"{parts[1]}.py").is_file():
        return "cli" if parts[1:2] == ["cli"] else ""
    return parts[1]


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    own = layer(path)
    allowed = {own, "", *MAY_IMPORT[own]}
    wrong = sorted(name for name in imported(path) if (imgedit_layer(name) or "") not in allowed)
    forbidden = FORBIDDEN_LIBRARIES[own]
    wrong += sorted(name for name in imported(path) if any(_within(name, prefix) for prefix in forbidden))
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {wrong}"


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_serving_reads_the_settings(path):
    if layer(path) in SETTINGS_READERS or path.name == "config.py":
        return
    assert "imgedit.config" not in imported(path), f"{path.relative_to(PACKAGE)} reads the settings"


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
    assert packages == [
        "api",
        "durable",
        "lora",
        "media",
        "model",
        "playground",
        "ranks",
        "scheduling",
        "serving",
        "weights",
    ]
    assert sorted(name for name in MAY_IMPORT if name not in ("", "cli")) == packages


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_long(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_tests_mirror_the_packages():
    tests = Path(__file__).resolve().parent
    for package in MAY_IMPORT:
        if package not in ("", "cli", "playground"):
            assert (tests / package / "__init__.py").is_file(), package


def test_no_two_public_classes_share_a_name():
    seen: dict[str, Path] = {}
    for path in modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                assert node.name not in seen, f"{node.name} in {path} and {seen[node.name]}"
                seen[node.name] = path


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_records_with_many_fields_are_built_with_keywords(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ClassDef) or not _is_dataclass(node):
            continue
        fields = [item for item in node.body if isinstance(item, ast.AnnAssign) and "ClassVar" not in ast.unparse(item)]
        if len(fields) > MAX_POSITIONAL_FIELDS:
            assert _keyword_only(node), f"{node.name} ({path.relative_to(PACKAGE)}) has {len(fields)} fields"


def everything_named() -> list[Path]:
    """The project's Python files beside this one: the package, service.py, the tests, benchmarks and dev tools."""
    root = PACKAGE.parent
    found = [root / "service.py", *modules()]
    for folder in ("tests", "bench", "devtools"):
        found += [path for path in (root / folder).rglob("*.py") if "node_modules" not in path.parts]
    return sorted(path for path in found if path != Path(__file__).resolve())


@pytest.mark.parametrize("path", everything_named(), ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_adapter_never_names_a_lora_or_a_family(path):
    """The model family is a family and a LoRA a lora: "adapter" names neither (but where others fixed the name)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name | ast.arg | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(getattr(node, "id", None) or getattr(node, "arg", None) or getattr(node, "name", ""))
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    wrong = sorted(name for name in names if "adapter" in name.lower() and name not in FIXED_ADAPTER_NAMES)
    assert not wrong, f"{path} names {wrong}"


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(decorator) for decorator in node.decorator_list)


def _keyword_only(node: ast.ClassDef) -> bool:
    return any("kw_only=True" in ast.unparse(decorator) for decorator in node.decorator_list)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".") or (prefix.startswith("_") and name.startswith(prefix))
