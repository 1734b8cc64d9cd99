from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.lora.sources import LoraError, apply_loras, parse_loras
from imgedit.model.tiny import build_tiny


def test_parse_sources_and_scales(tmp_path):
    weights = tmp_path / "style.safetensors"
    weights.write_bytes(b"")
    specs = parse_loras(
        f"{weights}:0.5, {tmp_path}, owner/repo, owner/repo/sub/dir/file.safetensors:1.25, owner/repo:-1"
    )
    assert [(spec.source, spec.weight_name, spec.subfolder, spec.scale) for spec in specs] == [
        (str(tmp_path), "style.safetensors", None, 0.5),
        (str(tmp_path), None, None, 1.0),
        ("owner/repo", None, None, 1.0),
        ("owner/repo", "file.safetensors", "sub/dir", 1.25),
        ("owner/repo", None, None, -1.0),
    ]


@pytest.mark.parametrize("value", ["", "a,,b", "/no/such/file.safetensors", "justaname", "owner//x"])
def test_bad_entries_are_refused(value):
    with pytest.raises(LoraError):
        apply_loras(object(), value or ",", fuse=False)


def test_a_pipeline_without_lora_support_is_refused(tmp_path):
    with pytest.raises(LoraError, match="does not take LoRA"):
        apply_loras(object(), str(tmp_path), fuse=False)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A random LoRA for the tiny Qwen transformer, saved the way diffusers saves them."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    torch.manual_seed(1)
    pipeline.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    directory = tmp_path_factory.mktemp("lora")
    type(pipeline).save_lora_weights(directory, transformer_lora_layers=get_peft_model_state_dict(pipeline.transformer))
    return directory


def edit(pipeline) -> np.ndarray:
    with torch.inference_mode():
        output = pipeline(
            image=[Image.new("RGB", (64, 64), (0, 120, 240))],
            prompt="p",
            height=64,
            width=64,
            num_inference_steps=2,
            true_cfg_scale=1.0,
            generator=torch.Generator().manual_seed(0),
        )
    return np.asarray(output.images[0]).astype(int)


def test_a_lora_changes_the_output_and_its_scale_matters(lora_dir):
    base = edit(build_tiny("tiny:qwen-image-edit-plus").pipeline)
    with_lora = build_tiny("tiny:qwen-image-edit-plus").pipeline
    assert apply_loras(with_lora, str(lora_dir), fuse=False) == ["lora0"]
    full = edit(with_lora)
    zero = build_tiny("tiny:qwen-image-edit-plus").pipeline
    apply_loras(zero, f"{lora_dir}:0", fuse=False)
    assert np.abs(full - base).max() > 0
    assert np.abs(edit(zero) - base).max() <= 1


def test_fusing_gives_the_same_pictures(lora_dir):
    unfused = build_tiny("tiny:qwen-image-edit-plus").pipeline
    apply_loras(unfused, f"{lora_dir}:0.7", fuse=False)
    fused = build_tiny("tiny:qwen-image-edit-plus").pipeline
    apply_loras(fused, f"{lora_dir}:0.7", fuse=True)
    assert not any("lora" in name for name, _ in fused.transformer.named_parameters())
    assert np.abs(edit(fused) - edit(unfused)).max() <= 2


def test_a_missing_hub_lora_is_a_clear_error():
    with pytest.raises(LoraError, match="cannot load 'imgedit-tests/absent-lora'"):
        apply_loras(build_tiny("tiny:qwen-image-edit-plus").pipeline, "imgedit-tests/absent-lora", fuse=False)


@pytest.mark.parametrize(
    ("value", "scale"), [("owner/name:1e-3", 0.001), (" owner/name : 0.5", 0.5), ("owner/name:-2E1", -20.0)]
)
def test_scales_in_any_float_spelling(value, scale):
    (spec,) = parse_loras(value)
    assert (spec.source, spec.scale) == ("owner/name", scale)


@pytest.mark.parametrize("value", ["owner/name:", "owner/name:x", "owner/name:1:2"])
def test_malformed_scales_are_refused(value):
    with pytest.raises(LoraError, match="bad scale"):
        parse_loras(value)
