"""What start-up checks before any model loads, and how many workers it starts."""

from __future__ import annotations

import pytest
import torch

from imgedit.config import Settings
from imgedit.errors import StartupError
from imgedit.serving.recipe import ModelRecipe, prepare_model
from imgedit.serving.startup import check_settings, worker_count


def test_a_tiny_model_with_default_settings_passes():
    check_settings(Settings(model="tiny:qwen-image-edit-plus"))


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
    with pytest.raises(StartupError, match=message):
        check_settings(Settings(model="tiny:qwen-image-edit-plus", **options))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"family": "nope"}, "IMGEDIT_FAMILY: unknown family 'nope'"),
        ({"lora": "./missing.safetensors"}, "IMGEDIT_LORA"),
        ({"lora": "owner/name:x:y"}, "IMGEDIT_LORA: bad scale"),
        ({"lora_adapters": "ink"}, "IMGEDIT_LORA_ADAPTERS"),
        ({"lora_adapters": "a=owner/x,b=owner/y", "max_loras": 1}, "IMGEDIT_MAX_LORAS: 1 is fewer than the 2"),
        ({"lora_dir": "/nonexistent/loras"}, "IMGEDIT_LORA_DIR"),
        ({"ulysses_degree": 2, "ring_degree": 2}, "IMGEDIT_RING_DEGREE"),
    ],
)
def test_family_loras_and_ranks_are_checked_before_loading(options, message):
    with pytest.raises(StartupError, match=message):
        check_settings(Settings(model="tiny:qwen-image-edit-plus", **options))


def test_one_worker_per_gpu_by_default(monkeypatch):
    assert worker_count(Settings(workers=3)) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_count(Settings()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_count(Settings()) == 4
    assert worker_count(Settings(device_map="balanced")) == 1
    assert worker_count(Settings(device="cpu")) == 1


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("tiny:instruct-pix2pix", "instruct-pix2pix runs its guidance in one batched call"),
        ("tiny:flux2", "flux2 has no classifier-free guidance"),
    ],
)
def test_guidance_that_cannot_stop_part_way_refuses_a_fraction_at_start_up(model, says):
    settings = Settings(model=model, device="cpu", cfg_until=0.5)
    with pytest.raises(StartupError, match=f"^IMGEDIT_CFG_UNTIL=0.5: {says}") as caught:
        prepare_model(ModelRecipe.from_settings(settings), 0)
    assert "\n" not in str(caught.value)
    assert prepare_model(ModelRecipe.from_settings(settings.model_copy(update={"cfg_until": 1.0})), 0).family
