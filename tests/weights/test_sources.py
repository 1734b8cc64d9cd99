from __future__ import annotations

import pytest
import torch

from imgedit.weights.loader import check_source
from imgedit.weights.options import LoadOptions
from imgedit.weights.sources import ModelLoadError, parse_source

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("model", "kind", "location"),
    [
        ("tiny:qwen-image-edit", "tiny", "tiny:qwen-image-edit"),
        ("bentoml:my-edit:v3", "bentoml", "my-edit:v3"),
        ("Qwen/Qwen-Image-Edit-2511", "hub", "Qwen/Qwen-Image-Edit-2511"),
        ("./models/edit", "directory", "models/edit"),
    ],
)
def test_sources_are_told_apart(model, kind, location):
    source = parse_source(model, "abc123")
    assert (source.kind, source.location) == (kind, location)
    assert source.revision == ("abc123" if kind == "hub" else None)


def test_source_check_accepts_tiny():
    check_source(LoadOptions(model="tiny:qwen-image-edit-plus"), CPU)


def test_unknown_tiny_model_is_refused():
    with pytest.raises(ModelLoadError, match="unknown tiny model 'tiny:nope'"):
        check_source(LoadOptions(model="tiny:nope"), CPU)


def test_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        check_source(LoadOptions(model=str(tmp_path)), CPU)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        check_source(LoadOptions(model=str(tmp_path / "absent")), CPU)


def test_unreachable_hub_model_says_how_to_run_the_tiny_model():
    with pytest.raises(ModelLoadError) as caught:
        check_source(LoadOptions(model="imgedit-tests/not-a-real-model"), CPU)
    message = str(caught.value)
    assert "imgedit-tests/not-a-real-model" in message
    assert "IMGEDIT_MODEL=tiny:qwen-image-edit-plus" in message
    assert "\n" not in message


def test_a_model_missing_from_the_bentoml_store_says_how_to_add_it():
    with pytest.raises(ModelLoadError, match="imgedit import-model"):
        check_source(LoadOptions(model="bentoml:imgedit-tests-absent-model"), CPU)
