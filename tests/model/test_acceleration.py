from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgedit.model.acceleration import (
    AccelerationOptions,
    OptionError,
    StepCache,
    apply_options,
    check_options,
    use_step_cache,
)
from imgedit.model.tiny import build_tiny

CPU = torch.device("cpu")


def fresh():
    return build_tiny("tiny:qwen-image-edit-plus").pipeline


def edit(pipeline, steps: int = 6, **options) -> np.ndarray:
    with torch.inference_mode():
        output = pipeline(
            image=[Image.new("RGB", (64, 64), (90, 30, 200))],
            prompt="p",
            negative_prompt=" ",
            true_cfg_scale=4.0,
            height=64,
            width=64,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            **options,
        )
    return np.asarray(output.images[0])


def test_nothing_is_applied_by_default():
    assert apply_options(fresh(), AccelerationOptions(), CPU) == []


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_portable_attention_backends_work_on_cpu(backend):
    pipeline = fresh()
    reference = edit(pipeline)
    assert apply_options(pipeline, AccelerationOptions(attention_backend=backend), CPU) == [f"attention={backend}"]
    assert np.abs(edit(pipeline).astype(int) - reference).max() <= 2


@pytest.mark.parametrize("backend", ["_native_cudnn", "flash", "sage", "_flash_3"])
def test_cuda_attention_backends_are_refused_without_cuda(backend):
    with pytest.raises(OptionError, match=f"IMGEDIT_ATTENTION_BACKEND: '{backend}' needs a CUDA device"):
        check_options(AccelerationOptions(attention_backend=backend), CPU)


def test_hub_attention_kernels_cannot_even_be_configured(monkeypatch):
    from imgedit.config import ConfigError, load_settings

    monkeypatch.setenv("IMGEDIT_ATTENTION_BACKEND", "flash_hub")
    with pytest.raises(ConfigError, match="IMGEDIT_ATTENTION_BACKEND"):
        load_settings()


@pytest.mark.parametrize(
    ("cache", "expected"), [("first_block", "cache=first_block"), ("taylorseer", "cache=taylorseer")]
)
def test_caches_run_and_change_the_computation(cache, expected):
    pipeline = fresh()
    reference = edit(pipeline, steps=12)
    options = AccelerationOptions(cache=cache, cache_threshold=0.5, cache_interval=3)
    assert apply_options(pipeline, options, CPU) == [expected]
    cached = edit(pipeline, steps=12)
    assert cached.shape == reference.shape
    assert not np.array_equal(cached, reference)  # steps were skipped or predicted


def test_each_call_runs_with_its_own_step_cache_and_switches_only_when_it_differs():
    pipeline = fresh()
    plain = edit(pipeline, steps=8)
    use_step_cache(pipeline, StepCache(kind="taylorseer", interval=3))
    hooks = pipeline.transformer._diffusers_hook
    cached = edit(pipeline, steps=8)
    use_step_cache(pipeline, StepCache(kind="taylorseer", interval=3))  # the same: left as it is
    assert pipeline.transformer._diffusers_hook is hooks and pipeline.transformer.is_cache_enabled
    use_step_cache(pipeline, StepCache())
    assert not pipeline.transformer.is_cache_enabled
    assert np.array_equal(edit(pipeline, steps=8), plain) and not np.array_equal(cached, plain)
    use_step_cache(pipeline, StepCache(kind="first_block", threshold=0.5))
    assert np.array_equal(edit(pipeline, steps=8), edit_with_first_block(steps=8))


def test_a_call_stopped_midway_leaves_the_next_one_a_clean_cache():
    pipeline = fresh()
    cache = StepCache(kind="taylorseer", interval=3)
    use_step_cache(pipeline, cache)
    clean = edit(pipeline, steps=8)

    def stop_at_step_3(pipe, step, timestep, tensors):
        if step == 3:
            raise RuntimeError("stopped")
        return tensors

    with pytest.raises(RuntimeError, match="stopped"):
        edit(pipeline, steps=8, callback_on_step_end=stop_at_step_3)
    use_step_cache(pipeline, cache)  # what every call does first: the stopped call's state is gone
    assert np.array_equal(edit(pipeline, steps=8), clean)


def edit_with_first_block(steps: int) -> np.ndarray:
    pipeline = fresh()
    apply_options(pipeline, AccelerationOptions(cache="first_block", cache_threshold=0.5), CPU)
    return edit(pipeline, steps=steps)


def test_vae_tiling_and_slicing_are_switched_on():
    pipeline = fresh()
    applied = apply_options(pipeline, AccelerationOptions(vae_tiling=True, vae_slicing=True), CPU)
    assert applied == ["vae_tiling", "vae_slicing"]
    assert pipeline.vae.use_tiling and pipeline.vae.use_slicing
    assert edit(pipeline).shape == (64, 64, 3)


def test_a_vae_without_tiling_is_refused():
    class Plain:
        vae = object()
        transformer = object()

    with pytest.raises(OptionError, match="IMGEDIT_VAE_TILING"):
        apply_options(Plain(), AccelerationOptions(vae_tiling=True), CPU)


def test_regional_compilation_is_chosen_when_the_model_has_repeated_blocks(monkeypatch):
    pipeline = fresh()
    compiled = []
    monkeypatch.setattr(type(pipeline.transformer), "compile_repeated_blocks", lambda self, **kw: compiled.append(kw))
    assert apply_options(pipeline, AccelerationOptions(compile=True), CPU) == ["compile=regional"]
    assert compiled == [{"fullgraph": True}]


def test_compiled_denoiser_still_edits():
    """A real regional compilation (slow: tens of seconds on a CPU)."""
    pipeline = fresh()
    reference = edit(pipeline, steps=2)
    assert apply_options(pipeline, AccelerationOptions(compile=True), CPU) == ["compile=regional"]
    assert np.abs(edit(pipeline, steps=2).astype(int) - reference).max() <= 2
