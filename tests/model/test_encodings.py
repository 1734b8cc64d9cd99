"""Reused encodings: the same bytes with and without them, the encoders skipped on a repeat, bounded by bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.encodings import EncodingCache, fingerprint, observe_lookups
from imgedit.model.families.qwen_image_edit import QwenImageEditFamily, QwenImageEditPlusFamily
from imgedit.model.tiny import build_tiny
from tests.model.families.conftest import plan

IMAGE = InputImage(rgb=Image.new("RGB", (64, 64), (90, 30, 160)), alpha=None)
OTHER = InputImage(rgb=Image.new("RGB", (64, 64), (10, 200, 60)), alpha=None)


@pytest.fixture
def lookups():
    seen: list[bool] = []
    observe_lookups(seen.append)
    yield seen
    observe_lookups(None)


def family_with_cache(megabytes: int = 64) -> tuple[QwenImageEditPlusFamily, EncodingCache]:
    family = QwenImageEditPlusFamily(build_tiny("tiny:qwen-image-edit-plus").pipeline)
    cache = EncodingCache(megabytes * 2**20)
    family.keep_encodings(cache)
    return family, cache


def edit(family, images=(IMAGE,), seeds=(3,), **options) -> list[np.ndarray]:
    return [
        np.asarray(image.convert("RGB"), dtype=np.uint8)
        for call in plan(family, list(images), Size(64, 64), list(seeds), num_inference_steps=2, **options).calls
        for image in call.invoke()
    ]


def test_a_repeated_edit_skips_the_encoders_and_gives_the_same_bytes(lookups):
    plain = QwenImageEditPlusFamily(build_tiny("tiny:qwen-image-edit-plus").pipeline)
    family, cache = family_with_cache()
    expected = edit(plain)
    first = edit(family)
    # The prompt and the negative prompt through the vision-language encoder, the reference through the VAE.
    assert lookups == [False, False, False]
    second = edit(family)
    assert lookups[3:] == [True, True, True]
    assert all(np.array_equal(a, b) for a, b in zip(expected, first, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(expected, second, strict=True))
    assert len(cache) == 3 and cache.size_bytes > 0


def test_another_seed_reuses_them_and_another_picture_or_prompt_does_not(lookups):
    family, _ = family_with_cache()
    edit(family)
    edit(family, seeds=(4,))
    assert lookups[3:] == [True, True, True]
    edit(family, images=(OTHER,))
    assert lookups[6:] == [False, False, False]
    edit(family, prompt="another prompt")
    assert lookups[9:] == [False, True, True]  # the negative prompt and the picture are the same


def test_several_images_each_from_its_seed_are_the_same_bytes_as_without_the_cache():
    plain = QwenImageEditPlusFamily(build_tiny("tiny:qwen-image-edit-plus").pipeline)
    family, _ = family_with_cache()
    expected = edit(plain, seeds=(1, 2))
    edit(family, seeds=(1, 2))
    assert all(np.array_equal(a, b) for a, b in zip(expected, edit(family, seeds=(1, 2)), strict=True))


def test_the_inpainting_pipeline_keeps_its_prompt_encodings_only():
    family = QwenImageEditFamily(build_tiny("tiny:qwen-image-edit").pipeline)
    family.keep_encodings(EncodingCache(2**20))
    assert family.inpaint_pipeline is not None
    # It samples its VAE encoding with the request's generator: kept, it would repeat the first request's sample.
    assert "_encode_vae_image" not in vars(family.inpaint_pipeline)
    assert "_get_qwen_prompt_embeds" in vars(family.inpaint_pipeline)
    assert {"_encode_vae_image", "_get_qwen_prompt_embeds"} <= set(vars(family.pipeline))


def test_nothing_is_wrapped_when_it_is_off():
    family, _ = family_with_cache(megabytes=0)
    assert "_get_qwen_prompt_embeds" not in vars(family.pipeline)


def test_the_least_recently_used_go_first_within_the_bytes():
    cache = EncodingCache(max_bytes=3 * 400)  # three tensors of 100 float32
    for key in "abc":
        cache.lookup(key, lambda: torch.zeros(100))
    cache.lookup("a", lambda: pytest.fail("a is kept"))  # a is now the most recently used
    cache.lookup("d", lambda: torch.zeros(100))
    assert len(cache) == 3 and cache.size_bytes == 1200
    recomputed: list[str] = []
    for key in "abcd":
        cache.lookup(key, lambda key=key: recomputed.append(key) or torch.zeros(100))
    assert recomputed[0] == "b"  # evicted by d, then its return evicts the next oldest, and so on
    cache.lookup("huge", lambda: torch.zeros(1000))  # larger than the whole cache: returned, not kept
    assert "huge" not in cache._entries


def digest_of(value) -> str:
    digest = hashlib.blake2b()
    fingerprint(value, digest)
    return digest.hexdigest()


def test_the_key_tells_apart_what_changes_an_encoding():
    base = digest_of(["a prompt", Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(2, 2), 1024])
    assert base == digest_of(["a prompt", Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(2, 2), 1024])
    for changed in (
        ["a prompt ", Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(2, 2), 1024],
        ["a prompt", Image.new("RGB", (4, 4), (1, 2, 4)), torch.ones(2, 2), 1024],
        ["a prompt", Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(4), 1024],
        ["a prompt", Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(2, 2, dtype=torch.float64), 1024],
        ["a prompt", Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(2, 2), 512],
        [["a prompt"], Image.new("RGB", (4, 4), (1, 2, 3)), torch.ones(2, 2), 1024],
    ):
        assert digest_of(changed) != base
    assert digest_of(["ab", "c"]) != digest_of(["a", "bc"])
    with pytest.raises(TypeError):
        digest_of(object())
