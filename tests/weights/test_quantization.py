"""IMGEDIT_QUANTIZE, published quantized checkpoints and IMGEDIT_TRANSFORMER, loaded in-process on the CPU.

What runs here: int8 (torchao) on every family, a GGUF denoiser, a checkpoint saved quantized, LoRA on
quantized bases, previews and fused calls on them. What cannot (fp8, nf4: no CPU path) is covered by
its refusal; so are the combinations diffusers gets wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bench.quantization import write_gguf
from imgedit.config import ConfigError, Settings, load_settings
from imgedit.edit import EditOptions
from imgedit.errors import StartupError
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families import family_class_for
from imgedit.model.spec import Defaults
from imgedit.model.tiny import build_tiny
from imgedit.serving.options import load_options
from imgedit.serving.startup import check_settings
from imgedit.weights.loader import load_model
from imgedit.weights.memory import component_bytes, footprint, parameter_bytes
from imgedit.weights.options import QuantizationOptions
from imgedit.weights.quantization import QuantizationError, check_combination, lora_refusal, plan_weights
from imgedit.weights.sources import ModelLoadError

#: One tiny model per family, and its denoiser.
FAMILIES = {
    "qwen-image-edit-plus": "transformer",
    "qwen-image-edit": "transformer",
    "flux-kontext": "transformer",
    "flux2": "transformer",
    "flux2-klein": "transformer",
    "instruct-pix2pix": "unet",
    "stable-diffusion": "unet",
}
#: Largest mean difference, in levels of 255, between an int8 and a float32 picture of the same edit.
#: Measured on an AMD EPYC: 0.07 to 0.15 (the largest pixel difference 1 to 3); the margin is for other CPUs.
INT8_MEAN_TOLERANCE = 1.0


def edit(pipeline, seed: int = 3, steps: int = 3) -> np.ndarray:
    """The picture ``pipeline``'s family makes for a fixed 64x64 edit, as an int array."""
    family = family_class_for(pipeline)(pipeline, overrides=Defaults(steps=steps))
    image = InputImage(rgb=Image.new("RGB", (64, 64), (40, 150, 220)), alpha=None)
    (call,) = family.plan(family.resolve(EditOptions(prompt="a red roof", seed=seed), [image], Size(64, 64))).calls
    (output,) = call.invoke()
    return np.asarray(output.convert("RGB"), dtype=int)


@pytest.mark.parametrize("tiny", sorted(FAMILIES))
def test_int8_serves_every_family_smaller_and_close_to_float32(tiny):
    denoiser = FAMILIES[tiny]
    full = load_model(load_options(Settings(model=f"tiny:{tiny}")))
    quantized = load_model(load_options(Settings(model=f"tiny:{tiny}", quantize="int8")))
    assert quantized.options == (f"quantize=int8:{denoiser}",)
    weights = quantized.pipeline.components[denoiser]
    assert any(type(parameter).__name__ == "Int8Tensor" for parameter in weights.parameters())
    ratio = quantized.parameter_bytes[denoiser] / full.parameter_bytes[denoiser]
    # Only linear layers are converted: most of a transformer, a minority of a tiny UNet (convolutions).
    assert ratio < (0.6 if denoiser == "transformer" else 0.8)
    others = {name: size for name, size in quantized.parameter_bytes.items() if name != denoiser}
    assert others == {name: size for name, size in full.parameter_bytes.items() if name != denoiser}
    # The memory plan's estimate from the float32 shapes is the storage measured once loaded, int8 included.
    for name, size in quantized.parameter_bytes.items():
        shapes = footprint(full.pipeline.components[name])
        assert component_bytes(shapes, torch.float32, "int8" if name == denoiser else "none") == size
        assert size == parameter_bytes(quantized.pipeline.components[name])
    difference = np.abs(edit(quantized.pipeline) - edit(full.pipeline))
    assert difference.mean() <= INT8_MEAN_TOLERANCE


def test_text_encoders_are_quantized_on_request_through_transformers():
    built = build_tiny("tiny:flux-kontext").pipeline
    loaded = load_model(
        load_options(Settings(model="tiny:flux-kontext", quantize="int8", quantize_components="text_encoder_2"))
    )
    assert loaded.options == ("quantize=int8:text_encoder_2",)
    # transformers keeps the last layer and the output embedding unconverted; the estimate knows it.
    assert loaded.parameter_bytes["text_encoder_2"] == component_bytes(
        footprint(built.text_encoder_2), torch.float32, "int8"
    )
    encoder = loaded.pipeline.text_encoder_2  # T5, a transformers model
    assert type(encoder.encoder.block[0].layer[1].DenseReluDense.wi.weight).__name__ == "Int8Tensor"
    assert type(loaded.pipeline.transformer.proj_out.weight) is torch.nn.Parameter


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"quantize": "fp8"},
            "IMGEDIT_QUANTIZE: 'fp8' needs an NVIDIA GPU with FP8 support (compute capability 8.9 or newer), "
            "and this device is cpu; 'int8' runs here",
        ),
        (
            {"quantize": "nf4"},
            "IMGEDIT_QUANTIZE: 'nf4' runs through bitsandbytes, which diffusers supports only on a GPU, "
            "and this device is cpu; 'int8' runs here",
        ),
        (
            {"quantize_components": "text_encoder"},
            "IMGEDIT_QUANTIZE_COMPONENTS: set, but IMGEDIT_QUANTIZE is none; set both or neither",
        ),
    ],
)
def test_what_the_cpu_cannot_run_is_refused_before_anything_loads(options, message, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("these refusals are the CPU's")

    def no_build(name):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr("imgedit.weights.loader.build_tiny", no_build)
    settings = Settings(model="tiny:qwen-image-edit-plus", **options)
    with pytest.raises(StartupError) as preflight:
        check_settings(settings)
    with pytest.raises(ModelLoadError) as worker:
        load_model(load_options(settings))
    assert str(preflight.value) == str(worker.value) == message


def test_gpus_without_fp8_or_without_bitsandbytes_are_refused(monkeypatch):
    from imgedit.weights import quantization

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(QuantizationError) as fp8:
        quantization.check_device(QuantizationOptions("fp8"), cuda)
    assert str(fp8.value) == (
        "IMGEDIT_QUANTIZE: 'fp8' needs compute capability 8.9 or newer (Ada, Hopper, Blackwell), "
        "and NVIDIA A100-SXM4-80GB has 8.0; use 'int8' or 'nf4'"
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    quantization.check_device(QuantizationOptions("fp8"), cuda)  # a Hopper GPU runs it
    real_find_spec = quantization.importlib.util.find_spec
    monkeypatch.setattr(
        quantization.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real_find_spec(name)
    )
    with pytest.raises(QuantizationError) as nf4:
        quantization.check_device(QuantizationOptions("nf4"), cuda)
    assert str(nf4.value) == (
        "IMGEDIT_QUANTIZE: 'nf4' needs the bitsandbytes package, which is not installed (pip install 'imgedit[nf4]')"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("IMGEDIT_QUANTIZE", "int4", "IMGEDIT_QUANTIZE: Input should be 'none', 'int8', 'fp8' or 'nf4' (got 'int4')"),
        ("IMGEDIT_QUANTIZE_COMPONENTS", "transformer;vae", "IMGEDIT_QUANTIZE_COMPONENTS: Value error, expected"),
        ("IMGEDIT_MEMORY_BUDGET_GIB", "-1", "IMGEDIT_MEMORY_BUDGET_GIB: Input should be greater than 0"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_variable(variable, value, message, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_an_unknown_component_is_refused(monkeypatch):
    with pytest.raises(ModelLoadError, match=r"IMGEDIT_QUANTIZE_COMPONENTS: 'unet' is not a model of this pipeline"):
        load_model(
            load_options(Settings(model="tiny:qwen-image-edit-plus", quantize="int8", quantize_components="unet"))
        )


INDEX = {
    "_class_name": "QwenImageEditPlusPipeline",
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
}


def plan_of(settings, published=None):
    def read_config(name):
        if name == "scheduler":
            return None  # a scheduler has scheduler_config.json, no config.json
        return {"quantization_config": published} if published and name == "transformer" else {}

    return plan_weights(load_options(settings), INDEX, read_config)


@pytest.mark.parametrize(
    ("settings", "published", "message"),
    [
        (
            {"quantize": "int8", "offload": "group"},
            None,
            "IMGEDIT_OFFLOAD: 'group' does not work with the transformer's torchao weights: streamed group "
            "offloading cannot pin torchao's int8 tensors (diffusers issue 14433); use IMGEDIT_OFFLOAD=model",
        ),
        ({"quantize": "fp8", "offload": "sequential"}, None, "IMGEDIT_OFFLOAD: 'sequential' does not work"),
        ({"quantize": "nf4", "offload": "group"}, None, "IMGEDIT_OFFLOAD: 'group' does not work"),
        ({"offload": "sequential"}, {"quant_method": "bitsandbytes", "load_in_4bit": True}, "IMGEDIT_OFFLOAD"),
        ({"lora": "owner/repo"}, {"quant_method": "nunchaku"}, "IMGEDIT_LORA: LoRA adapters on weights quantized"),
        (
            {"quantize": "int8"},
            {"quant_method": "torchao"},
            "IMGEDIT_QUANTIZE: the transformer of 'tiny:qwen-image-edit-plus' is published quantized (torchao) "
            "and loads as it is; leave it out of IMGEDIT_QUANTIZE_COMPONENTS",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused_at_start_up(settings, published, message):
    settings = Settings(model="tiny:qwen-image-edit-plus", **settings)
    with pytest.raises(QuantizationError) as caught:
        check_combination(load_options(settings), plan_of(settings, published), torch.device("cuda", 0))
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "settings",
    [
        {"quantize": "int8", "offload": "model"},
        {"quantize": "fp8", "device_map": "balanced"},
        {"quantize": "nf4", "offload": "model", "lora": "owner/repo", "lora_fuse": True},
        {"quantize": "int8", "compile": True, "cache": "first_block", "lora": "owner/repo", "lora_fuse": True},
    ],
)
def test_combinations_that_work_on_a_gpu_are_accepted(settings):
    settings = Settings(model="tiny:qwen-image-edit-plus", **settings)
    check_combination(load_options(settings), plan_of(settings), torch.device("cuda", 0))


def test_the_one_answer_about_loras_on_a_quantized_base():
    assert lora_refusal("torchao", fuse=True) is None
    assert lora_refusal("bitsandbytes", fuse=True) is None
    assert lora_refusal("gguf", fuse=False) is None
    assert "cannot be fused into GGUF" in lora_refusal("gguf", fuse=True)
    assert "not supported" in lora_refusal("modelopt", fuse=False)


def test_the_inpainting_twin_shares_the_components_as_they_are():
    """diffusers' ``from_pipe`` would cast them to float32: a bfloat16 model doubled, a quantized one refused."""
    bf16 = load_model(load_options(Settings(model="tiny:flux-kontext", dtype="bfloat16"))).pipeline
    family = family_class_for(bf16)(bf16)
    assert family.inpaint_pipeline.transformer is bf16.transformer
    assert bf16.transformer.dtype == torch.bfloat16
    int8 = load_model(load_options(Settings(model="tiny:flux-kontext", quantize="int8"))).pipeline
    twin = family_class_for(int8)(int8).inpaint_pipeline
    assert type(twin.transformer.proj_out.weight).__name__ == "Int8Tensor"


# -- checkpoints published quantized, and a GGUF denoiser -------------------------------------------------


@pytest.fixture(scope="module")
def saved_int8(tmp_path_factory):
    """A tiny Qwen pipeline saved with its transformer quantized (torchao int8), as a community repo would be."""
    directory = tmp_path_factory.mktemp("published-int8")
    load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", quantize="int8"))).pipeline.save_pretrained(
        directory
    )
    return directory


def test_a_checkpoint_saved_quantized_loads_as_published(saved_int8):
    check_settings(Settings(model=str(saved_int8)))
    loaded = load_model(load_options(Settings(model=str(saved_int8))))
    assert loaded.options == ("published=torchao:transformer",)
    assert type(loaded.pipeline.transformer.proj_out.weight).__name__ == "Int8Tensor"
    quantized = load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", quantize="int8")))
    assert loaded.parameter_bytes == quantized.parameter_bytes
    assert np.array_equal(edit(loaded.pipeline), edit(quantized.pipeline))
    with pytest.raises(StartupError, match="published quantized"):
        check_settings(Settings(model=str(saved_int8), quantize="int8"))


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "transformer-Q8_0.gguf"
    assert write_gguf(build_tiny("tiny:qwen-image-edit-plus").pipeline.transformer, path) >= 4
    return path


def test_a_gguf_transformer_replaces_the_pipelines(gguf_file):
    full = load_model(load_options(Settings(model="tiny:qwen-image-edit-plus")))
    loaded = load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", transformer=str(gguf_file))))
    assert loaded.options == ("transformer=transformer-Q8_0.gguf",)
    kinds = {type(parameter).__name__ for parameter in loaded.pipeline.transformer.parameters()}
    assert "GGUFParameter" in kinds
    assert loaded.parameter_bytes["transformer"] < full.parameter_bytes["transformer"]
    assert np.abs(edit(loaded.pipeline) - edit(full.pipeline)).mean() <= INT8_MEAN_TOLERANCE


def test_a_gguf_file_loads_into_a_saved_pipeline_and_the_text_encoder_can_be_quantized(gguf_file, saved_int8, tmp_path):
    saved = tmp_path / "saved"
    build_tiny("tiny:qwen-image-edit-plus").pipeline.save_pretrained(saved)
    settings = Settings(
        model=str(saved), transformer=str(gguf_file), quantize="int8", quantize_components="text_encoder"
    )
    check_settings(settings)
    loaded = load_model(load_options(settings))
    assert loaded.options == ("quantize=int8:text_encoder", "transformer=transformer-Q8_0.gguf")
    with pytest.raises(StartupError, match="IMGEDIT_QUANTIZE: the transformer comes quantized from"):
        check_settings(Settings(model=str(saved), transformer=str(gguf_file), quantize="int8"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("model.bin", "IMGEDIT_TRANSFORMER: 'model.bin' is neither a .gguf nor a .safetensors file"),
        ("./missing.gguf", "IMGEDIT_TRANSFORMER: './missing.gguf' is not a file here, nor a hub path like"),
        ("owner/file.gguf", "IMGEDIT_TRANSFORMER: 'owner/file.gguf' is not a file here, nor a hub path like"),
    ],
)
def test_a_bad_single_file_is_refused_before_loading(value, message):
    with pytest.raises(StartupError) as caught:
        check_settings(Settings(model="tiny:qwen-image-edit-plus", transformer=value))
    assert str(caught.value).startswith(message)


# -- LoRA, previews and fused calls on a quantized base ------------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A random LoRA on the tiny Qwen transformer's attention and on the MLP layers GGUF quantizes."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    torch.manual_seed(1)
    targets = ["to_q", "to_k", "to_v", "img_mlp.net.2", "txt_mlp.net.2"]
    pipeline.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    directory = tmp_path_factory.mktemp("lora")
    type(pipeline).save_lora_weights(directory, transformer_lora_layers=get_peft_model_state_dict(pipeline.transformer))
    return directory


@pytest.mark.parametrize("fuse", [False, True])
def test_lora_on_an_int8_base_acts_as_on_the_float32_one(lora_dir, fuse):
    base = edit(load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", quantize="int8"))).pipeline)
    full = edit(load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", lora=str(lora_dir)))).pipeline)
    settings = Settings(model="tiny:qwen-image-edit-plus", quantize="int8", lora=str(lora_dir), lora_fuse=fuse)
    loaded = load_model(load_options(settings))
    with_lora = edit(loaded.pipeline)
    layer = loaded.pipeline.transformer.transformer_blocks[0].attn.to_q
    # Unfused, peft wraps the quantized layer; fused, the sum is quantized again.
    assert type(layer).__name__ == ("Linear" if fuse else "TorchaoLoraLinear")
    assert type(layer.weight if fuse else layer.get_base_layer().weight).__name__ == "Int8Tensor"
    assert np.abs(with_lora - base).mean() > 2 * np.abs(with_lora - full).mean()  # the LoRA acts, as unquantized


def test_lora_on_a_gguf_base_runs_unfused_and_refuses_to_fuse(lora_dir, gguf_file):
    settings = Settings(model="tiny:qwen-image-edit-plus", transformer=str(gguf_file))
    base = edit(load_model(load_options(settings)).pipeline)
    with_lora = edit(load_model(load_options(settings.model_copy(update={"lora": str(lora_dir)}))).pipeline)
    assert np.abs(with_lora - base).max() > 0
    with pytest.raises(ModelLoadError) as caught:  # a tiny model's components are known once it is built
        load_model(load_options(settings.model_copy(update={"lora": str(lora_dir), "lora_fuse": True})))
    assert str(caught.value) == (
        "IMGEDIT_LORA_FUSE: adapters cannot be fused into GGUF weights (they stay as published); "
        "set IMGEDIT_LORA_FUSE=false"
    )


def test_previews_and_fused_calls_run_on_an_int8_base():
    from imgedit.scheduling.fusion import fuse

    pipeline = load_model(load_options(Settings(model="tiny:instruct-pix2pix", quantize="int8"))).pipeline
    family = family_class_for(pipeline)(pipeline, overrides=Defaults(steps=2))

    def call(seed):
        image = InputImage(rgb=Image.new("RGB", (64, 64), (seed * 40, 90, 30)), alpha=None)
        (planned,) = family.plan(family.resolve(EditOptions(prompt=f"p{seed}", seed=seed), [image], Size(64, 64))).calls
        return planned

    previews = []
    alone = [
        call(seed).invoke(on_step=lambda step, total, latents: previews.append(latents.clone())) for seed in (1, 2)
    ]
    assert [picture.size for picture in family.preview(call(1), previews[0])] == [(64, 64)]
    fused = fuse([call(1), call(2)]).invoke()
    for (single,), batched in zip(alone, fused, strict=True):
        assert np.abs(np.asarray(single, dtype=int) - np.asarray(batched, dtype=int)).max() <= 1


def test_loras_chosen_per_request_switch_on_an_int8_base(lora_dir):
    from imgedit.lora.registry import LoraRegistry
    from imgedit.lora.sources import spec_in_directory

    pipeline = load_model(load_options(Settings(model="tiny:qwen-image-edit-plus", quantize="int8"))).pipeline
    base = edit(pipeline)
    registry = LoraRegistry(pipeline, max_loras=1)
    registry.load("ink", spec_in_directory(str(lora_dir.parent), lora_dir.name))
    registry.activate((("ink", 1.0),))
    inked = edit(pipeline)
    registry.activate(())
    assert np.abs(inked - base).max() > 0  # the LoRA acts on the quantized base
    assert np.array_equal(edit(pipeline), base)  # and off again, the quantized base is exactly as before
