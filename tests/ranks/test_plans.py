"""Choosing, refusing and applying diffusers' context and tensor parallelism (no process group here)."""

from __future__ import annotations

import pytest
import torch

from imgedit.config import Settings
from imgedit.errors import StartupError
from imgedit.model.tiny import build_tiny
from imgedit.ranks.plans import ParallelError, RankLayout, check_model, pretrained_components
from imgedit.serving.options import load_options, rank_layout
from imgedit.serving.recipe import ModelRecipe, prepare_model
from imgedit.serving.startup import check_ranks
from imgedit.weights.loader import load_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def settings(**values: object) -> Settings:
    return Settings(model="tiny:qwen-image-edit-plus", **values)


def test_the_degrees_multiply_into_the_ranks_per_edit():
    assert settings().ranks_per_edit == 1
    assert settings(ulysses_degree=4).ranks_per_edit == 4
    layout = rank_layout(settings(tp_degree=2))
    assert (layout.ranks, layout.context, layout.variable, layout.describe()) == (2, False, "IMGEDIT_TP_DEGREE", "tp=2")
    assert check_ranks(settings(), CPU, gpus=0) == RankLayout()
    both = rank_layout(settings(cfg_parallel=True, ulysses_degree=2))
    assert (both.ranks, both.context, both.describe()) == (4, True, "cfg=2,ulysses=2")
    alone = rank_layout(settings(cfg_parallel=True))
    assert (alone.ranks, alone.context, alone.variable, alone.describe()) == (2, False, "IMGEDIT_CFG_PARALLEL", "cfg=2")
    assert settings(cfg_parallel=True, ulysses_degree=4).ranks_per_edit == 8


def test_ulysses_runs_on_the_cpu_and_on_gpus_it_divides():
    assert check_ranks(settings(ulysses_degree=2), CPU, gpus=0).ranks == 2
    assert check_ranks(settings(ulysses_degree=2), CUDA, gpus=8).ranks == 2
    assert check_ranks(settings(ring_degree=2, attention_backend="flash"), CUDA, gpus=4).ring == 2
    assert check_ranks(settings(tp_degree=4), CUDA, gpus=8).tp == 4


@pytest.mark.parametrize(
    ("values", "device", "gpus", "message"),
    [
        ({"ring_degree": 2}, CPU, 0, r"^IMGEDIT_RING_DEGREE: ring attention needs a CUDA .* this device is cpu"),
        ({"tp_degree": 2}, CPU, 0, r"^IMGEDIT_TP_DEGREE: diffusers shards weights on CUDA devices only"),
        (
            {"ulysses_degree": 3},
            CUDA,
            8,
            r"^IMGEDIT_ULYSSES_DEGREE: 3 ranks per edit do not divide the 8 visible GPUs$",
        ),
        ({"tp_degree": 2, "workers": 3}, CUDA, 4, r"^IMGEDIT_WORKERS: 3 workers of 2 ranks need 6 GPUs, and 4 are"),
        ({"ulysses_degree": 2, "ring_degree": 2}, CUDA, 4, r"^IMGEDIT_RING_DEGREE: ring and Ulysses attention"),
        ({"ulysses_degree": 2, "tp_degree": 2}, CUDA, 4, r"^IMGEDIT_TP_DEGREE: diffusers cannot combine"),
        ({"ulysses_degree": 2, "device_map": "balanced"}, CUDA, 2, r"^IMGEDIT_DEVICE_MAP: "),
        ({"tp_degree": 2, "offload": "model"}, CUDA, 2, r"^IMGEDIT_OFFLOAD: .* IMGEDIT_TP_DEGREE$"),
        ({"ulysses_degree": 2, "attention_backend": "_native_math"}, CPU, 0, r"^IMGEDIT_ATTENTION_BACKEND: '_native_m"),
        ({"ring_degree": 2}, CUDA, 2, r"^IMGEDIT_RING_DEGREE: ring attention needs an attention backend that"),
        ({"ulysses_degree": 2, "cache": "first_block"}, CPU, 0, r"^IMGEDIT_CACHE: 'first_block' decides on each rank"),
        ({"tp_degree": 2, "lora": "a.safetensors"}, CUDA, 2, r"^IMGEDIT_LORA: diffusers' tensor parallelism shards"),
        ({"tp_degree": 2, "cfg_parallel": True}, CUDA, 4, r"^IMGEDIT_CFG_PARALLEL: .* IMGEDIT_TP_DEGREE; choose one$"),
        ({"cfg_parallel": True}, CUDA, 3, r"^IMGEDIT_CFG_PARALLEL: 2 ranks per edit do not divide the 3 visible GPUs$"),
    ],
)
def test_what_cannot_work_is_refused_naming_the_variable(values, device, gpus, message):
    with pytest.raises(ParallelError, match=message):
        check_ranks(settings(**values), device, gpus)


def test_a_worker_checks_nothing_about_the_gpu_count():
    # In a worker, only its own GPUs are visible; the count was checked before the workers started.
    assert check_ranks(settings(ulysses_degree=2, workers=4), CUDA, gpus=None).ranks == 2


def test_a_family_without_a_context_parallel_plan_is_refused():
    unet = build_tiny("tiny:stable-diffusion").pipeline
    with pytest.raises(ParallelError, match=r"^IMGEDIT_ULYSSES_DEGREE: UNet2DConditionModel \(StableDiffusion"):
        check_model(unet, RankLayout(ulysses=2))
    with pytest.raises(ParallelError, match=r"^IMGEDIT_TP_DEGREE: UNet2DConditionModel .* no tensor-parallel plan"):
        check_model(unet, RankLayout(tp=2))
    check_model(unet, RankLayout())


def test_the_head_count_must_suit_the_degree(tiny_model):
    pipeline = tiny_model.pipeline  # 3 attention heads
    check_model(pipeline, RankLayout(ulysses=2))  # ulysses_anything pads the heads
    check_model(pipeline, RankLayout(ring=2))
    with pytest.raises(ParallelError, match=r"^IMGEDIT_ULYSSES_DEGREE: 4 ranks for the 3 attention heads"):
        check_model(pipeline, RankLayout(ulysses=4))
    with pytest.raises(ParallelError, match=r"^IMGEDIT_TP_DEGREE: 2 does not divide the 3 attention heads"):
        check_model(pipeline, RankLayout(tp=2))


def test_tensor_parallelism_loads_the_transformer_through_diffusers_sharding_loader(saved_tiny):
    assert pretrained_components(str(saved_tiny), None, torch.float32, RankLayout()) == {}
    # diffusers' own check, before it reads a weight: the tiny transformer's 3 heads do not split in 2.
    with pytest.raises(ParallelError, match=r"^IMGEDIT_TP_DEGREE: `tp_degree` \(2\) must divide the number of"):
        load_model(load_options(Settings(model=str(saved_tiny), device="cpu", tp_degree=2)))


def test_tensor_parallelism_needs_a_transformer(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "U"]}')
    with pytest.raises(
        ParallelError, match=r"^IMGEDIT_TP_DEGREE: StableDiffusionPipeline has no diffusers transformer"
    ):
        pretrained_components(str(tmp_path), None, torch.float32, RankLayout(tp=2))


def test_guidance_over_two_ranks_needs_a_family_with_guidance():
    check_model(build_tiny("tiny:stable-diffusion").pipeline, RankLayout(cfg=2))  # its batched guidance is split
    recipe = ModelRecipe.from_settings(Settings(model="tiny:flux2", device="cpu", cfg_parallel=True))
    with pytest.raises(StartupError, match=r"^IMGEDIT_CFG_PARALLEL: Flux2Pipeline runs no classifier-free guidance"):
        prepare_model(recipe, 0)
