from __future__ import annotations

import json

import pytest
import torch

from imgedit.weights.loader import load_model
from imgedit.weights.options import LoadOptions
from imgedit.weights.sources import ModelLoadError


def test_tiny_model_loads_on_cpu_in_float32():
    loaded = load_model(LoadOptions(model="tiny:qwen-image-edit-plus"))
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype is torch.float32
    assert loaded.default_steps == 4
    assert type(loaded.pipeline).__name__ == "QwenImageEditPlusPipeline"


def test_unknown_tiny_model_is_refused():
    with pytest.raises(ModelLoadError, match="unknown tiny model"):
        load_model(LoadOptions(model="tiny:nope"))


def test_local_directory_loads_with_from_pretrained(saved_tiny):
    assert json.loads((saved_tiny / "model_index.json").read_text())["_class_name"] == "QwenImageEditPlusPipeline"
    loaded = load_model(LoadOptions(model=str(saved_tiny)))
    assert type(loaded.pipeline).__name__ == "QwenImageEditPlusPipeline"
    assert loaded.model_id == str(saved_tiny)
    assert loaded.default_steps is None
    assert torch.equal(
        loaded.pipeline.transformer.state_dict()["img_in.weight"],
        load_model(LoadOptions(model="tiny:qwen-image-edit-plus")).pipeline.transformer.state_dict()["img_in.weight"],
    )


def test_broken_local_directory_fails_with_a_one_line_message(saved_tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((saved_tiny / "model_index.json").read_text())
    with pytest.raises(ModelLoadError) as caught:
        load_model(LoadOptions(model=str(broken)))
    assert "\n" not in str(caught.value)
    assert "tiny:qwen-image-edit-plus" in str(caught.value)
