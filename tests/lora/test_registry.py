"""LoRA adapters chosen per request: loading, switching between runs, unloading, the cap."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from devtools.lora_files import write_lora
from imgedit.edit import EditOptions
from imgedit.lora.registry import LoraRegistry, UnknownLora
from imgedit.lora.sources import LoraError, parse_named_loras, spec_in_directory
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families import family_class_for
from imgedit.model.tiny import build_tiny

IMAGE = [InputImage(rgb=Image.new("RGB", (64, 64), (10, 100, 200)), alpha=None)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pipeline = build_tiny("tiny:qwen-image-edit-plus").pipeline
    family = family_class_for(pipeline)(pipeline)
    files = tmp_path_factory.mktemp("loras")
    for seed, name in enumerate(("a", "b", "c"), start=1):
        write_lora(pipeline, files / name, seed)
    return family, files


def edit(family) -> np.ndarray:
    made = family.plan(family.resolve(EditOptions(prompt="p", seed=3, num_inference_steps=2), IMAGE, Size(64, 64)))
    return np.asarray(made.calls[0].invoke()[0])


def test_switching_between_runs_gives_each_choice_exactly_what_it_gives_alone(model):
    family, files = model
    base = edit(family)
    plain_layers = set(family.loaded.transformer.state_dict())
    registry = LoraRegistry(family.loaded, max_loras=4)
    for name in ("a", "b"):
        registry.load(name, spec_in_directory(str(files), name))
    registry.activate(())
    assert np.array_equal(edit(family), base)  # loaded but off: exactly the base model
    outputs = {}
    for choice in [(("a", 1.0),), (("b", 1.0),), (("a", 0.5),), (("a", 1.0), ("b", 0.5)), ()]:
        registry.activate(choice)
        outputs[choice] = edit(family)
    assert np.array_equal(outputs[()], base)
    assert len({bytes(picture) for picture in outputs.values()}) == len(outputs)  # every choice differs
    for choice in [(("b", 1.0),), (("a", 1.0), ("b", 0.5)), (("a", 0.5),), ()]:  # again, in another order
        registry.activate(choice)
        assert np.array_equal(edit(family), outputs[choice])
    for name in ("a", "b"):
        registry.retire(name)
        registry.unload(name)
    registry.activate(())
    assert np.array_equal(edit(family), base)
    # With the last family gone the model has its own layers back, not peft's empty wrappers.
    assert set(family.loaded.transformer.state_dict()) == plain_layers


def test_selection_checks_names_and_takes_the_loaded_scale(model):
    family, files = model
    registry = LoraRegistry(family.loaded, max_loras=4)
    registry.load("c", spec_in_directory(str(files), "c", scale=0.7))
    try:
        assert registry.selection([("c", None)]) == (("c", 0.7),)
        assert registry.selection([("c", 0.2)]) == (("c", 0.2),)
        with pytest.raises(UnknownLora, match=r"'nope'.*loaded: c"):
            registry.selection([("nope", None)])
        with pytest.raises(LoraError, match="already loaded"):
            registry.load("c", spec_in_directory(str(files), "c"))
    finally:
        registry.retire("c")
        registry.unload("c")
    assert registry.names() == []


def test_the_cap_refuses_one_lora_too_many(model):
    family, files = model
    registry = LoraRegistry(family.loaded, max_loras=1)
    registry.load("a", spec_in_directory(str(files), "a"))
    try:
        with pytest.raises(LoraError, match="IMGEDIT_MAX_LORAS"):
            registry.load("b", spec_in_directory(str(files), "b"))
    finally:
        registry.retire("a")
        registry.unload("a")


def test_retiring_refuses_new_requests_and_waits_for_admitted_ones(model):
    family, files = model
    registry = LoraRegistry(family.loaded, max_loras=2)
    registry.load("a", spec_in_directory(str(files), "a"))
    admitted = registry.selection([("a", None)])
    registry.acquire(admitted)
    retired = threading.Event()
    retiring = threading.Thread(target=lambda: (registry.retire("a"), retired.set()), daemon=True)
    retiring.start()
    while registry.has("a"):  # the name goes at once
        retiring.join(0.01)
    with pytest.raises(UnknownLora):
        registry.selection([("a", None)])
    assert not retired.is_set()  # still waiting for the admitted request
    registry.release(admitted)
    retiring.join(timeout=30)
    assert retired.is_set()
    registry.unload("a")


def test_a_model_without_lora_support_refuses_choices_but_runs_without():
    registry = LoraRegistry(object(), max_loras=2)
    assert registry.refusal and "takes no LoRA" in registry.refusal
    registry.activate(())  # nothing to switch
    with pytest.raises(LoraError):
        registry.selection([("a", None)])


def test_named_loras_and_paths_under_the_directory(tmp_path):
    (tmp_path / "loras" / "style").mkdir(parents=True)
    (tmp_path / "loras" / "one.safetensors").write_bytes(b"x")
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (tmp_path / "loras" / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    directory = str(tmp_path / "loras")
    assert spec_in_directory(directory, "one.safetensors").weight_name == "one.safetensors"
    assert spec_in_directory(directory, "style", 0.5).scale == 0.5
    for escape in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "link.safetensors", "style/../.."):
        with pytest.raises(LoraError, match="outside IMGEDIT_LORA_DIR"):
            spec_in_directory(directory, escape)
    with pytest.raises(LoraError, match="needs IMGEDIT_LORA_DIR"):
        spec_in_directory(None, "one.safetensors")
    named = parse_named_loras(f"ink={tmp_path}/loras/one.safetensors:0.8, hub=owner/repo/file.safetensors")
    assert [(name, spec.scale) for name, spec in named] == [("ink", 0.8), ("hub", 1.0)]
    for bad in ("noname", "=x", "a b=owner/repo", "a=owner/repo,a=owner/other"):
        with pytest.raises(LoraError):
            parse_named_loras(bad)
