"""The field table says which families use each model field; every family's plans must agree."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch
from PIL import Image

from imgedit.api.fields import FIELDS, MODEL_FIELDS
from imgedit.media.images import InputImage
from imgedit.media.sizing import Size
from imgedit.model.families import FAMILIES, family_class_for
from imgedit.model.tiny import build_tiny
from tests.model.families.conftest import plan

#: A tiny model of every family.
TINY = {
    "qwen-image-edit-plus": "tiny:qwen-image-edit-plus",
    "qwen-image-edit": "tiny:qwen-image-edit",
    "flux-kontext": "tiny:flux-kontext",
    "flux2": "tiny:flux2",
    "flux2-klein": "tiny:flux2-klein",
    "instruct-pix2pix": "tiny:instruct-pix2pix",
    "stable-diffusion": "tiny:stable-diffusion",
}
#: A value of each field that differs from every family's default (and from the contexts below).
CHANGED = {
    "prompt": "something else",
    "negative_prompt": "blurry",
    "n": 2,
    "seed": 5,
    "quality": "low",
    "input_fidelity": "high",
    "num_inference_steps": 3,
    "guidance_scale": 3.0,
    "true_cfg_scale": 3.0,
    "image_guidance_scale": 2.0,
    "strength": 0.5,
}
#: Settings under which a field may matter: some only count when guidance runs.
CONTEXTS: list[dict[str, Any]] = [{}, {"true_cfg_scale": 2.0, "guidance_scale": 2.0}]
IMAGE = InputImage(rgb=Image.new("RGB", (64, 64), (40, 120, 200)), alpha=None)
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (0, 0, 32, 64))


@pytest.fixture(scope="module")
def families() -> dict[str, Any]:
    built = {}
    for family, model in TINY.items():
        pipeline = build_tiny(model).pipeline
        built[family] = family_class_for(pipeline)(pipeline)
    return built


def test_every_family_has_a_tiny_model_here():
    assert set(TINY) == {family.name for family in FAMILIES}


def test_the_declared_families_exist():
    names = {family.name for family in FAMILIES}
    for field in FIELDS:
        assert set(field.families or ()) <= names, field.name


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_field_changes_the_calls_of_exactly_the_families_that_use_it(families, name):
    (field,) = [field for field in FIELDS if field.name == name]
    assert name in MODEL_FIELDS
    expected = set(field.families) if field.families is not None else set(TINY)
    using = {served for served, family in families.items() if _uses(family, name)}
    assert using == expected


def _uses(family: Any, name: str) -> bool:
    for mask in (None, MASK):
        for context in CONTEXTS:
            options = {"seed": 1, "prompt": "turn it red", **context}
            base = _described(family, mask, options)
            if base != _described(family, mask, {**options, name: CHANGED[name]}):
                return True
    return False


def _described(family: Any, mask: Image.Image | None, options: dict[str, Any]) -> list[Any]:
    """What the calls of a plan would do, comparable with ``==`` (generators by seed, images by content)."""
    options = dict(options)
    seed, n = options.pop("seed"), options.pop("n", 1)
    made = plan(family, [IMAGE], Size(64, 64), [seed + index for index in range(n)], mask=mask, **options)
    return [
        (
            type(call).__name__,
            id(call.pipeline),
            getattr(call, "negative_prompt", None),
            *((key, _comparable(value)) for key, value in sorted(call.kwargs.items())),
        )
        for call in made.calls
    ]


def _comparable(value: Any) -> Any:
    if isinstance(value, Image.Image):
        return (value.mode, value.size, hashlib.sha256(value.tobytes()).hexdigest())
    if isinstance(value, torch.Generator):
        return ("generator", value.initial_seed())
    if isinstance(value, list | tuple):
        return tuple(_comparable(item) for item in value)
    return value
