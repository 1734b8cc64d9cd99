from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.model.tiny import build_tiny
from imgedit.model.tiny.tokenizers import byte_level_alphabet


def test_byte_level_alphabet_covers_every_byte_once():
    alphabet = byte_level_alphabet()
    assert len(alphabet) == 256 == len(set(alphabet))
    assert alphabet[ord("A")] == "A"
    assert all(not symbol.isspace() for symbol in alphabet)


def test_unknown_tiny_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="tiny:qwen-image-edit-plus"):
        build_tiny("tiny:nope")


def test_tiny_model_is_the_real_pipeline_class(tiny_model):
    from diffusers import QwenImageEditPlusPipeline

    assert type(tiny_model.pipeline) is QwenImageEditPlusPipeline
    assert tiny_model.pipeline.transformer.config.zero_cond_t is True
    assert tiny_model.default_steps == 4


def _edit(pipeline, prompt: str, seed: int) -> np.ndarray:
    image = Image.new("RGB", (64, 64), (200, 50, 50))
    with torch.inference_mode():
        output = pipeline(
            image=[image],
            prompt=prompt,
            negative_prompt=" ",
            true_cfg_scale=4.0,
            height=64,
            width=64,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(seed),
        )
    return np.asarray(output.images[0])


def test_tiny_edits_are_deterministic_and_depend_on_prompt_and_seed(tiny_model):
    first = _edit(tiny_model.pipeline, "make it blue", 1)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, _edit(tiny_model.pipeline, "make it blue", 1))
    assert not np.array_equal(first, _edit(tiny_model.pipeline, "make it green", 1))
    assert not np.array_equal(first, _edit(tiny_model.pipeline, "make it blue", 2))


def test_two_builds_have_identical_weights(tiny_model):
    other = build_tiny("tiny:qwen-image-edit-plus")
    for mine, theirs in zip(
        tiny_model.pipeline.transformer.state_dict().values(),
        other.pipeline.transformer.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(mine, theirs)
