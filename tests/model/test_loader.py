from __future__ import annotations

import json

import pytest
import torch

from imgedit.config import Settings
from imgedit.model.loader import ModelLoadError, check_model_source, load_model, pick_device, pick_dtype


def test_device_and_dtype_defaults():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert pick_dtype("auto", torch.device("cpu")) is torch.float32
    assert pick_dtype("float16", torch.device("cpu")) is torch.float16


def test_tiny_model_loads_on_cpu_in_float32():
    loaded = load_model(Settings(model="tiny:qwen-image-edit-plus"))
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype is torch.float32
    assert loaded.default_steps == 4
    assert type(loaded.pipeline).__name__ == "QwenImageEditPlusPipeline"


@pytest.mark.parametrize("model", ["tiny:qwen-image-edit-plus"])
def test_source_check_accepts_tiny(model):
    check_model_source(Settings(model=model))


def test_unknown_tiny_model_is_refused():
    with pytest.raises(ModelLoadError, match="unknown tiny model 'tiny:nope'"):
        check_model_source(Settings(model="tiny:nope"))
    with pytest.raises(ModelLoadError, match="unknown tiny model"):
        load_model(Settings(model="tiny:nope"))


def test_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        check_model_source(Settings(model=str(tmp_path)))


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        check_model_source(Settings(model=str(tmp_path / "absent")))


def test_unreachable_hub_model_says_how_to_run_the_tiny_model():
    with pytest.raises(ModelLoadError) as caught:
        check_model_source(Settings(model="imgedit-tests/not-a-real-model"))
    message = str(caught.value)
    assert "imgedit-tests/not-a-real-model" in message
    assert "IMGEDIT_MODEL=tiny:qwen-image-edit-plus" in message
    assert "\n" not in message


def test_local_directory_loads_with_from_pretrained(saved_tiny):
    assert json.loads((saved_tiny / "model_index.json").read_text())["_class_name"] == "QwenImageEditPlusPipeline"
    settings = Settings(model=str(saved_tiny))
    check_model_source(settings)
    loaded = load_model(settings)
    assert type(loaded.pipeline).__name__ == "QwenImageEditPlusPipeline"
    assert loaded.model_id == str(saved_tiny)
    assert loaded.default_steps is None
    assert torch.equal(
        loaded.pipeline.transformer.state_dict()["img_in.weight"],
        load_model(Settings(model="tiny:qwen-image-edit-plus")).pipeline.transformer.state_dict()["img_in.weight"],
    )


def test_broken_local_directory_fails_with_a_one_line_message(saved_tiny, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((saved_tiny / "model_index.json").read_text())
    with pytest.raises(ModelLoadError) as caught:
        load_model(Settings(model=str(broken)))
    assert "\n" not in str(caught.value)
    assert "tiny:qwen-image-edit-plus" in str(caught.value)


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
    from imgedit.model.loader import parse_source

    source = parse_source(Settings(model=model, model_revision="abc123"))
    assert (source.kind, source.location) == (kind, location)
    assert source.revision == ("abc123" if kind == "hub" else None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"offload": "model"}, "IMGEDIT_OFFLOAD: offloading to the CPU needs a CUDA device"),
        ({"offload": "group"}, "IMGEDIT_OFFLOAD"),
        ({"device_map": "balanced"}, "IMGEDIT_DEVICE_MAP"),
        ({"attention_backend": "_native_cudnn"}, "IMGEDIT_ATTENTION_BACKEND"),
        ({"device": "cuda"}, "IMGEDIT_DEVICE"),
    ],
)
def test_options_this_machine_cannot_honour_are_refused_before_loading(options, message):
    if torch.cuda.is_available():
        pytest.skip("these options are valid on a machine with CUDA")
    with pytest.raises(ModelLoadError, match=message):
        check_model_source(Settings(model="tiny:qwen-image-edit-plus", **options))


def test_a_model_missing_from_the_bentoml_store_says_how_to_add_it():
    with pytest.raises(ModelLoadError, match="imgedit import-model"):
        check_model_source(Settings(model="bentoml:imgedit-tests-absent-model"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"family": "nope"}, "IMGEDIT_FAMILY: unknown family 'nope'"),
        ({"lora": "./missing.safetensors"}, "IMGEDIT_LORA"),
        ({"lora": "owner/name:x:y"}, "IMGEDIT_LORA: bad scale"),
    ],
)
def test_family_and_lora_are_checked_before_loading(options, message):
    with pytest.raises(ModelLoadError, match=message):
        check_model_source(Settings(model="tiny:qwen-image-edit-plus", **options))


def test_each_worker_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [pick_device("auto", worker) for worker in range(5)] == [
        torch.device("cuda", index) for index in (0, 1, 2, 3, 0)
    ]
    assert pick_device("cpu", 2) == torch.device("cpu")


def test_one_worker_per_gpu_by_default(monkeypatch):
    from imgedit.serving.startup import worker_count

    assert worker_count(Settings(workers=3)) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_count(Settings()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_count(Settings()) == 4
    assert worker_count(Settings(device_map="balanced")) == 1
    assert worker_count(Settings(device="cpu")) == 1
