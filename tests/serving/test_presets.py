"""Speed tiers behind ``quality``: the presets file, its checks against the model, and requests that run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.lora_files import write_lora
from imgedit.config import Settings
from imgedit.edit import EditOptions, LoraChoice
from imgedit.errors import StartupError
from imgedit.lora.admin import LoraAdmin
from imgedit.lora.registry import LoraRegistry
from imgedit.lora.sources import spec_in_directory
from imgedit.media.fetch import Fetcher, FetchPolicy
from imgedit.model.acceleration import StepCache
from imgedit.model.events import denoiser_call
from imgedit.model.families.flux2 import Flux2KleinFamily
from imgedit.model.families.qwen_image_edit import QwenImageEditPlusFamily
from imgedit.model.families.stable_diffusion import InstructPix2PixFamily
from imgedit.model.spec import Defaults, Levers
from imgedit.model.tiny import build_tiny
from imgedit.scheduling.engine import Engine
from imgedit.serving.handler import EditHandler
from imgedit.serving.presets import LEVELS, PresetError, Presets, check_presets, load_presets, parse_presets
from imgedit.serving.startup import check_settings, start_worker
from tests.helpers import form_request, gradient_png

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "presets" / "qwen-image-edit-2511.yaml"


def test_the_shipped_example_names_every_level_and_a_lightning_tier():
    presets = load_presets(str(EXAMPLE))
    assert tuple(presets.recipes) == LEVELS
    low = presets.recipes["low"]
    assert low.loras == (LoraChoice("lightning"),)
    assert dict(low.options) == {"num_inference_steps": 4, "true_cfg_scale": 1.0}
    assert presets.recipes["medium"].levers == {"cfg_until": 0.5}
    assert presets.for_quality("auto") is presets.recipes["high"]


def test_json_is_read_too(tmp_path):
    path = tmp_path / "presets.json"
    path.write_text(json.dumps({"low": {"num_inference_steps": 2, "cache": "taylorseer", "cache_interval": 3}}))
    recipe = load_presets(str(path)).recipes["low"]
    assert dict(recipe.options) == {"num_inference_steps": 2}
    assert dict(recipe.levers) == {"cache": "taylorseer", "cache_interval": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ultra: {}", "ultra: not a quality level; use low, medium, high, xhigh, max"),
        ("auto: {}", "auto: not a quality level; use low, medium, high, xhigh, max"),
        ("low: {steps: 4}", "low.steps: unknown key; use num_inference_steps, "),
        ("low: {num_inference_steps: 500}", "low.num_inference_steps: Input should be less than or equal to 200"),
        ("low: {num_inference_steps: true}", "low.num_inference_steps: Input should be a valid integer"),
        ("high: {guidance_scale: '4'}", "high.guidance_scale: Input should be a valid number"),
        ("low: {cfg_until: 0}", "low.cfg_until: Input should be greater than 0"),
        ("low: {cache: fast}", "low.cache: Input should be 'none', 'first_block' or 'taylorseer'"),
        ("low: {cache_interval: 0}", "low.cache_interval: Input should be greater than or equal to 1"),
        ("low: {input_fidelity: mid}", "low.input_fidelity: Input should be 'high' or 'low'"),
        ("low: {lora: 'bad name!'}", "low.lora: 'bad name!' is not an adapter name"),
        ('low: {lora: {"name": "a", "path": "a.safetensors"}}', "low.lora: name LoRAs of IMGEDIT_LORA_ADAPTERS"),
        ("low: [4]", "low: a recipe maps keys to values, not list"),
        ("- low", "the file must map quality levels (low, medium, high, xhigh, max) to recipes"),
        ("", "the file must map quality levels"),
        ("low: {num_inference_steps: 4", "not valid YAML or JSON: "),
        ("low: {}\nlow: {num_inference_steps: 4}", "not valid YAML or JSON: low is given twice"),
        ("low: {cache: none, cache: taylorseer}", "not valid YAML or JSON: cache is given twice"),
        ('low: {negative_prompt: "\\ud800"}', "low.negative_prompt: Field 'negative_prompt' holds a lone UTF-16"),
        # Found by the fuzzer: YAML's own constructors raise more than YAMLError.
        ("low: {guidance_scale: !!float 1e!3}", "not valid YAML or JSON: could not convert string to float"),
        ("low: {strength: !!int 0x}", "not valid YAML or JSON: "),
    ],
)
def test_a_bad_file_is_refused_naming_the_key(text, message):
    with pytest.raises(PresetError) as refused:
        parse_presets(text.encode())
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_a_file_that_cannot_be_read_or_is_too_large_is_refused(tmp_path):
    with pytest.raises(PresetError, match=r"^cannot read .*missing\.yaml: No such file"):
        load_presets(str(tmp_path / "missing.yaml"))
    large = tmp_path / "large.yaml"
    large.write_bytes(b"#" * (2 << 20))
    with pytest.raises(PresetError, match="is larger than 1048576 bytes"):
        load_presets(str(large))
    with pytest.raises(PresetError, match="not UTF-8"):
        parse_presets(b"low: {negative_prompt: \xff}")


def test_start_up_names_the_variable(tmp_path):
    path = tmp_path / "presets.yaml"
    path.write_text("low: {steps: 4}\n")
    with pytest.raises(StartupError, match=r"^IMGEDIT_PRESETS: low\.steps: unknown key"):
        check_settings(Settings(model="tiny:qwen-image-edit-plus", device="cpu", presets=str(path)))


def test_keys_that_are_not_text_are_judged_like_any_other_value():
    # Found by the fuzzer: YAML keys may be numbers, which the surrogate check took for text (a TypeError).
    recipe = parse_presets(b"low: {lora: [{name: fast, .0: 1}]}").recipes["low"]
    assert recipe.loras == (LoraChoice("fast"),)
    with pytest.raises(PresetError, match=r"^low\.num_inference_steps: Input should be a valid integer$"):
        parse_presets(b"low: {num_inference_steps: {.0: 1}}")


def test_a_null_value_leaves_its_key_unset():
    # Found by the fuzzer: a null came through as a value, and `cfg_until: null` would have failed every edit.
    recipe = parse_presets(b"low: {num_inference_steps: null, cfg_until: ~, cache: null}").recipes["low"]
    assert (dict(recipe.options), dict(recipe.levers)) == ({}, {})
    assert recipe.levers_over(Levers(cfg_until=0.5)) == Levers(cfg_until=0.5)


def test_a_requests_own_fields_win_over_its_tiers():
    recipe = parse_presets(b"low: {num_inference_steps: 4, true_cfg_scale: 1.0, negative_prompt: blur}").recipes["low"]
    filled = recipe.fill(EditOptions(prompt="p", quality="low", num_inference_steps=8))
    assert (filled.num_inference_steps, filled.true_cfg_scale, filled.negative_prompt) == (8, 1.0, "blur")


def test_a_tiers_levers_replace_the_servers_where_it_names_them():
    server = Levers(cfg_until=0.75, cache=StepCache(kind="first_block", threshold=0.1))
    recipes = parse_presets(b"low: {cache_threshold: 0.2}\nmedium: {cfg_until: 0.5}\nhigh: {cache: none}").recipes
    assert recipes["low"].levers_over(server) == Levers(
        cfg_until=0.75, cache=StepCache(kind="first_block", threshold=0.2)
    )
    assert recipes["medium"].levers_over(server) == Levers(cfg_until=0.5, cache=server.cache)
    assert recipes["high"].levers_over(server).cache == StepCache(kind="none", threshold=0.1)
    assert parse_presets(b"max: {num_inference_steps: 60}").recipes["max"].levers_over(server) is server


def check(presets: Presets, family, **options) -> None:
    """:func:`check_presets` with a one-rank server's values for what ``options`` leaves out."""
    values = {"ranks": 1, "context": False, "named_loras": [], "max_prompt_chars": 32_000, **options}
    check_presets(presets, family, **values)


@pytest.mark.parametrize(
    ("text", "ranks", "context", "message"),
    [
        ("low: {cfg_until: 0.5}", 1, False, "low.cfg_until: instruct-pix2pix runs its guidance in one batched call"),
        ("low: {cache: first_block}", 1, False, "low.cache: UNet2DConditionModel does not support diffusers' caching"),
        ("max: {lora: ink}", 1, False, "max.lora: 'ink' is not one of IMGEDIT_LORA_ADAPTERS"),
        ("max: {lora: light}", 2, False, "max.lora: per-request adapters need one rank per edit"),
        ("medium: {num_inference_steps: 2}", 2, True, None),
    ],
)
def test_what_a_recipe_asks_of_the_model_is_tried_at_start_up(text, ranks, context, message):
    family = InstructPix2PixFamily(build_tiny("tiny:instruct-pix2pix").pipeline)
    presets = parse_presets(text.encode())
    if message is None:
        check(presets, family, ranks=ranks, context=context, named_loras=["light"])
        return
    with pytest.raises(PresetError) as refused:
        check(presets, family, ranks=ranks, context=context, named_loras=["light"])
    assert str(refused.value).startswith(message)


def test_a_tier_is_planned_as_its_requests_would_be():
    family = Flux2KleinFamily(build_tiny("tiny:flux2-klein").pipeline)
    check(parse_presets(b"low: {num_inference_steps: 4, strength: 0.5}"), family)
    # Masked edits inpaint natively, and strength 0 leaves no step to run: every masked request would fail.
    with pytest.raises(PresetError, match=r"^low: strength=0 with 4 steps leaves no denoising step"):
        check(parse_presets(b"low: {num_inference_steps: 4, strength: 0}"), family)
    with pytest.raises(PresetError, match=r"^max\.negative_prompt: longer than IMGEDIT_MAX_PROMPT_CHARS \(8\)$"):
        check(parse_presets(b"max: {negative_prompt: 'blurry and dark'}"), family, max_prompt_chars=8)


def test_a_tier_the_model_cannot_run_stops_start_up_at_its_warm_up(tmp_path):
    # FLUX.1 Kontext's pipeline opens no cache context, which diffusers' step caches need on the first pass:
    # enabling one works, running it does not, so only the tier's own warm-up finds out.
    path = tmp_path / "presets.yaml"
    path.write_text("low: {cache: first_block}\n")
    with pytest.raises(StartupError, match=r"^IMGEDIT_PRESETS: low: this model cannot run the tier: No cache context"):
        start_worker(Settings(model="tiny:flux-kontext", device="cpu", presets=str(path)))


def test_first_block_cannot_split_with_the_sequence(tiny_model):
    family = QwenImageEditPlusFamily(tiny_model.pipeline)
    presets = parse_presets(b"low: {cache: first_block}")
    check(presets, family)  # tried on the model, then put back
    with pytest.raises(PresetError, match=r"^low\.cache: 'first_block' decides on each rank's slice"):
        check(presets, family, ranks=2, context=True)


# -- requests that run them ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiered(tiny_model, tmp_path_factory):
    """A handler serving the shipped example's tiers, with a LoRA registered as ``lightning``."""
    directory = tmp_path_factory.mktemp("loras")
    write_lora(tiny_model.pipeline, directory / "lightning", seed=4)
    settings = Settings(model="tiny:qwen-image-edit-plus")
    family = QwenImageEditPlusFamily(tiny_model.pipeline, overrides=Defaults(steps=2), native_pixels=64 * 64)
    registry = LoraRegistry(family.loaded, max_loras=2)
    engine = Engine(prepare=registry.activate, previewer=family.preview)
    engine.between_runs(lambda: registry.load("lightning", spec_in_directory(str(directory), "lightning"))).result()
    presets = load_presets(str(EXAMPLE))
    check(presets, family, named_loras=["lightning"])
    yield (
        EditHandler(settings, family, engine, Fetcher(FetchPolicy()), LoraAdmin(registry, engine, None), presets),
        EditHandler(settings, family, engine, Fetcher(FetchPolicy()), LoraAdmin(registry, engine, None)),
    )
    registry.retire("lightning")
    engine.between_runs(lambda: registry.unload("lightning")).result()
    engine.close()


async def edit(handler: EditHandler, **fields: str) -> dict:
    parts = [("image", gradient_png(64, 64)), ("prompt", "p"), ("seed", "5"), *fields.items()]
    response = await handler.handle(form_request(*parts))
    assert response.status_code == 200, response.body
    return json.loads(response.body)


def picture(body: dict) -> str:
    return body["data"][0]["b64_json"]


@pytest.mark.anyio
async def test_a_tier_runs_its_recipe_and_the_response_reports_it(tiered):
    with_presets, without = tiered
    low = await edit(with_presets, quality="low")
    spelled_out = await edit(without, lora="lightning", num_inference_steps="4", true_cfg_scale="1")
    assert low["quality"] == "low" and picture(low) == picture(spelled_out)
    # The request's own steps and LoRA choice win over the tier's.
    own = await edit(with_presets, quality="low", num_inference_steps="3", lora="lightning:0.5")
    spelled_out = await edit(without, lora="lightning:0.5", num_inference_steps="3", true_cfg_scale="1")
    assert picture(own) == picture(spelled_out)
    # auto runs high, which the example spells out as the model's own 40 steps.
    auto = await edit(with_presets)
    assert auto["quality"] == "high" and picture(auto) == picture(await edit(without, num_inference_steps="40"))


@pytest.mark.anyio
async def test_a_tiers_levers_apply_to_its_edits_alone(tiered):
    with_presets, _ = tiered
    counted: list[int] = []
    denoiser_call.observe(lambda: counted.append(1))
    try:
        await edit(with_presets, quality="medium")  # 20 steps, guidance on the first 10: 30 calls
        medium, counted[:] = len(counted), []
        await edit(with_presets, quality="high", num_inference_steps="20")  # the server's levers: 40 calls
        high = len(counted)
    finally:
        denoiser_call.observe(None)
    assert (medium, high) == (30, 40)


def test_presets_hold_nothing_but_their_recipes():
    assert Presets({}).for_quality("low") is None
