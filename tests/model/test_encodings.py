"""Reused encodings: the same bytes with and without them, the encoders skipped on a repeat, bounded by bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.lora_files import write_lora
from imgedit.edit import EditOptions
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import spec_in_directory
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.encodings import EncodingCache, fingerprint
from imgedit.model.events import encoding_lookup
from imgedit.model.families.flux2 import Flux2Family, Flux2KleinFamily
from imgedit.model.families.flux_kontext import FluxKontextFamily
from imgedit.model.families.qwen_image_edit import QwenImageEditFamily, QwenImageEditPlusFamily
from imgedit.model.tiny import build_tiny
from imgedit.scheduling.fusion import fuse, fusion_key
from tests.model.families.conftest import plan

IMAGE = InputImage(rgb=Image.new("RGB", (64, 64), (90, 30, 160)), alpha=None)
OTHER = InputImage(rgb=Image.new("RGB", (64, 64), (10, 200, 60)), alpha=None)


@pytest.fixture
def lookups():
    seen: list[bool] = []
    encoding_lookup.observe(seen.append)
    yield seen
    encoding_lookup.observe(None)


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


def test_fused_requests_key_their_prompts_together_and_give_the_same_bytes(lookups):
    def fused(family) -> list[np.ndarray]:
        calls = [
            plan(family, [IMAGE], Size(64, 64), [seed], prompt=prompt, num_inference_steps=2).calls[0]
            for seed, prompt in ((1, "a hat"), (2, "a scarf"))
        ]
        assert fusion_key(calls[0]) == fusion_key(calls[1]) is not None
        return [np.asarray(image.convert("RGB")) for image in fuse(calls).invoke()]

    expected = fused(QwenImageEditFamily(build_tiny("tiny:qwen-image-edit").pipeline))
    family = QwenImageEditFamily(build_tiny("tiny:qwen-image-edit").pipeline)
    family.keep_encodings(EncodingCache(64 * 2**20))
    lookups.clear()
    first = fused(family)
    looked_up = len(lookups)
    second = fused(family)
    assert looked_up > 0 and lookups == [False] * looked_up + [True] * looked_up
    for made in (first, second):
        assert all(np.array_equal(a, b) for a, b in zip(expected, made, strict=True))


def test_with_a_lora_on_the_transformer_the_kept_encodings_give_the_same_bytes(tmp_path, lookups):
    plain = QwenImageEditPlusFamily(build_tiny("tiny:qwen-image-edit-plus").pipeline)
    family, _ = family_with_cache()
    write_lora(plain.pipeline, tmp_path / "ink", seed=1)
    for each in (plain, family):
        registry = LoraRegistry(each.loaded, max_loras=1)
        registry.load("ink", spec_in_directory(str(tmp_path), "ink", 0.8))
        registry.activate((("ink", 0.8),))
    expected = edit(plain)
    first, second = edit(family), edit(family)
    assert lookups[-3:] == [True, True, True]
    for made in (first, second):
        assert all(np.array_equal(a, b) for a, b in zip(expected, made, strict=True))


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


@pytest.mark.parametrize(
    ("family_class", "model", "masked", "lookups_per_edit"),
    [
        # T5 for the prompt (CLIP is not kept: LoRAs may reach it), the reference through the VAE.
        (FluxKontextFamily, "tiny:flux-kontext", False, 2),
        (FluxKontextFamily, "tiny:flux-kontext", True, 2),
        # The prompt and the empty negative prompt of true CFG, each reference through the VAE.
        (Flux2KleinFamily, "tiny:flux2-klein", False, 3),
        (Flux2KleinFamily, "tiny:flux2-klein", True, 3),
        (Flux2Family, "tiny:flux2", False, 2),
    ],
)
def test_the_flux_families_keep_their_encodings_and_give_the_same_bytes(
    lookups, family_class, model, masked, lookups_per_edit
):
    def pictures(family) -> list[np.ndarray]:
        region = Image.new("L", (64, 64), 0)
        region.paste(255, (0, 0, 32, 64))
        options = {"num_inference_steps": 2, "negative_prompt": None}
        spec = family.resolve(
            EditOptions(prompt="a hat", seed=3, **options), [IMAGE], Size(64, 64), region if masked else None
        )
        return [np.asarray(image.convert("RGB")) for call in family.plan(spec).calls for image in call.invoke()]

    expected = pictures(family_class(build_tiny(model).pipeline))
    family = family_class(build_tiny(model).pipeline)
    family.keep_encodings(EncodingCache(64 * 2**20))
    first, second = pictures(family), pictures(family)
    assert lookups == [False] * lookups_per_edit + [True] * lookups_per_edit
    for pictures_made in (first, second):
        assert all(np.array_equal(a, b) for a, b in zip(expected, pictures_made, strict=True))
