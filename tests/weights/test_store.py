"""``imgedit import-model`` into a private BentoML store, then loading from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

IMGEDIT = Path(sys.executable).with_name("imgedit")


def run(*arguments: str, home: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "BENTOML_HOME": str(home), "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run(arguments, env=environment, capture_output=True, text=True, timeout=300)


def test_import_a_directory_then_load_it_from_the_store(saved_tiny, tmp_path):
    home = tmp_path / "bentoml"
    result = run(str(IMGEDIT), "import-model", str(saved_tiny), "--name", "tiny-edit", home=home)
    assert result.returncode == 0, result.stderr
    assert "serve it with IMGEDIT_MODEL=bentoml:tiny-edit:" in result.stdout
    assert "importing tiny-edit" in result.stderr  # the progress bar
    (version,) = (home / "models" / "tiny-edit").glob("*/model_index.json")
    stored = version.parent
    assert json.loads((stored / "model_index.json").read_text())["_class_name"] == "QwenImageEditPlusPipeline"
    assert sorted(p.relative_to(stored) for p in stored.rglob("*.safetensors")) == sorted(
        p.relative_to(saved_tiny) for p in saved_tiny.rglob("*.safetensors")
    )
    probe = (
        "import torch; from imgedit.weights.loader import check_source, load_model; "
        "from imgedit.weights.options import LoadOptions; "
        "options = LoadOptions(model='bentoml:tiny-edit'); check_source(options, torch.device('cpu')); "
        "print(type(load_model(options).pipeline).__name__)"
    )
    loaded = run(sys.executable, "-c", probe, home=home)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "QwenImageEditPlusPipeline"


def test_a_directory_that_is_not_a_pipeline_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run(str(IMGEDIT), "import-model", str(tmp_path), "--name", "x", home=tmp_path / "bentoml")
    assert result.returncode == 1
    assert "has no model_index.json" in result.stderr
    assert not (tmp_path / "bentoml" / "models" / "x").exists()


def test_an_unreachable_hub_repo_is_refused(tmp_path):
    result = run(str(IMGEDIT), "import-model", "imgedit-tests/absent", "--name", "x", home=tmp_path / "bentoml")
    assert result.returncode == 1
    assert "cannot get 'imgedit-tests/absent'" in result.stderr


def test_a_source_inside_a_dot_cache_folder_is_imported_whole(saved_tiny, tmp_path):
    """The Hugging Face cache lives in ~/.cache; only .cache folders *inside* the source are skipped."""
    import shutil

    source = tmp_path / ".cache" / "huggingface" / "snapshot"
    shutil.copytree(saved_tiny, source)
    (source / ".cache").mkdir()
    (source / ".cache" / "download-metadata").write_text("skip me")
    home = tmp_path / "bentoml"
    result = run(str(IMGEDIT), "import-model", str(source), "--name", "cached", "--quiet", home=home)
    assert result.returncode == 0, result.stderr
    (stored,) = (home / "models" / "cached").glob("*/model_index.json")
    assert not (stored.parent / ".cache").exists()
    assert len(list(stored.parent.rglob("*.safetensors"))) == len(list(saved_tiny.rglob("*.safetensors")))


def test_an_invalid_name_is_a_one_line_error(saved_tiny, tmp_path):
    result = run(str(IMGEDIT), "import-model", str(saved_tiny), "--name", "Bad Name!", home=tmp_path / "bentoml")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("imgedit: --name 'Bad Name!' is not a valid model name")
    assert "Traceback" not in result.stderr
