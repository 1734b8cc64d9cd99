"""The memory plan: estimates from shapes, the refusal before loading, and the settings it suggests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imgedit.config import Settings
from imgedit.model.tiny import build_tiny
from imgedit.serving.options import load_options
from imgedit.weights import memory
from imgedit.weights import plan as weights
from imgedit.weights.loader import load_model
from imgedit.weights.memory import Footprint, GiB, Placement, component_bytes, device_need
from imgedit.weights.sources import ModelLoadError

CONFIGS = Path(__file__).resolve().parents[2] / "bench" / "configs" / "qwen-image-edit-2511"
QWEN_MODELS = {
    "transformer": ("diffusers", "QwenImageTransformer2DModel"),
    "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
    "vae": ("diffusers", "AutoencoderKLQwenImage"),
}


def test_bytes_per_weight_by_method():
    layer = Footprint(float_elements=10, other_bytes=3, linear_elements=128 * 64, linear_rows=128)
    assert component_bytes(layer, torch.bfloat16) == 10 * 2 + 3 + 128 * 64 * 2
    assert component_bytes(layer, torch.float32, "int8") == 10 * 4 + 3 + 128 * 64 + 128 * 5
    assert component_bytes(layer, torch.bfloat16, "fp8") == 10 * 2 + 3 + 128 * 64 + 128 * 4
    assert component_bytes(layer, torch.bfloat16, "nf4") == 10 * 2 + 3 + 128 * 64 // 2 + 128 * 64 // 64 * 4
    assert component_bytes(Footprint(fixed_bytes=99, linear_elements=10**9), torch.float32) == 99


def test_a_model_too_large_for_the_budget_is_refused_with_what_would_fit():
    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    footprints = {
        name: memory.footprint(item) for name, item in pipeline.components.items() if isinstance(item, torch.nn.Module)
    }
    full = device_need(footprints, torch.float32, Placement()).total
    int8 = device_need(footprints, torch.float32, Placement("int8", ("transformer",))).total
    assert int8 < full
    budget = (int8 + full) / 2 / GiB  # room for the int8 transformer, not for the float32 one
    with pytest.raises(ModelLoadError) as caught:
        load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", memory_budget_gib=budget)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot load model 'tiny:qwen-image-edit-plus': the model needs about 1.0 GiB on cpu")
    assert "(weights: vae 1.8 MiB, text_encoder 0.2 MiB, transformer 0.7 MiB;" in message
    assert "settings that would fit: IMGEDIT_QUANTIZE=int8 (about 1.0 GiB); IMGEDIT_QUANTIZE=int8 " in message
    assert "IMGEDIT_QUANTIZE_COMPONENTS=text_encoder,transformer (about 1.0 GiB)" in message
    assert message.endswith("IMGEDIT_MEMORY_CHECK=false starts anyway")
    loaded = load_model(
        load_options(Settings(model="tiny:qwen-image-edit-plus", memory_budget_gib=budget, quantize="int8"))
    )
    assert loaded.options == ("quantize=int8:transformer",)
    unchecked = load_model(
        load_options(Settings(model="tiny:qwen-image-edit-plus", memory_budget_gib=budget, memory_check=False))
    )
    assert unchecked.options == ()


@pytest.fixture(scope="module")
def qwen_2511():
    """Footprints of full-size Qwen-Image-Edit-2511, built on the meta device from the published configs."""
    return memory.meta_footprints(QWEN_MODELS, lambda name: json.loads((CONFIGS / f"{name}.json").read_text()))


def test_full_size_qwen_needs_what_its_parameter_counts_say(qwen_2511):
    assert qwen_2511["transformer"].elements == pytest.approx(20.43e9, rel=1e-3)
    assert qwen_2511["text_encoder"].elements == pytest.approx(8.29e9, rel=1e-3)
    weights_bf16 = device_need(qwen_2511, torch.bfloat16, Placement()).weights
    assert sum(weights_bf16) / 1e9 == pytest.approx(57.7, abs=0.05)  # "about 58 GB", as the quick start says
    int8 = device_need(qwen_2511, torch.bfloat16, Placement("int8", ("transformer",))).weights
    assert int8[0] / weights_bf16[0] == pytest.approx(0.5, abs=0.01)


def test_on_a_48_gb_gpu_qwen_is_refused_with_the_settings_that_fit(qwen_2511, monkeypatch):
    """An L40S-like GPU (compute capability 8.9, 44.5 GiB free) without bitsandbytes, faked."""
    from imgedit.weights import quantization

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(44.5 * GiB), 48 * GiB))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    real_find_spec = quantization.importlib.util.find_spec
    monkeypatch.setattr(
        quantization.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real_find_spec(name)
    )
    with pytest.raises(memory.MemoryPlanError) as caught:
        weights.check_memory(
            load_options(Settings(model="Qwen/Qwen-Image-Edit-2511")),
            qwen_2511,
            torch.bfloat16,
            torch.device("cuda", 0),
        )
    assert str(caught.value) == (
        "the model needs about 60.1 GiB on cuda:0 (weights: transformer 38.1 GiB, text_encoder 15.4 GiB, "
        "vae 0.2 GiB; 53.7 GiB of them resident at once, plus 6.4 GiB working memory) and 44.5 GiB is available; "
        "settings that would fit: IMGEDIT_QUANTIZE=fp8 (about 41.1 GiB); IMGEDIT_QUANTIZE=int8 (about 41.1 GiB); "
        "IMGEDIT_QUANTIZE=fp8 IMGEDIT_QUANTIZE_COMPONENTS=transformer,text_encoder (about 34.4 GiB); "
        "IMGEDIT_QUANTIZE=int8 IMGEDIT_QUANTIZE_COMPONENTS=transformer,text_encoder (about 34.4 GiB). "
        "IMGEDIT_MEMORY_CHECK=false starts anyway"
    )
    settings = Settings(model="Qwen/Qwen-Image-Edit-2511", quantize="fp8")
    weights.check_memory(load_options(settings), qwen_2511, torch.bfloat16, torch.device("cuda", 0))  # fits


def test_the_budget_overrides_what_the_device_reports():
    assert memory.available_bytes(torch.device("cpu"), 2.5) == int(2.5 * GiB)
    assert 0 < memory.available_bytes(torch.device("cpu")) == pytest.approx(memory.host_available_bytes(), rel=0.5)
