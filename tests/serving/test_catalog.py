import pytest

from imgedit.config import Settings
from imgedit.errors import StartupError
from imgedit.serving.catalog import ModelEntry, check_several, model_entries, served_settings
from imgedit.serving.startup import check_settings


def test_one_model_without_imgedit_models():
    assert model_entries(Settings(model="tiny:flux2", served_model_name="f")) == [ModelEntry("f", "tiny:flux2")]


def test_entries_are_sources_or_named_sources_the_first_the_default():
    settings = Settings(models=" tiny:qwen-image-edit-plus , klein=tiny:flux2-klein,Qwen/Qwen-Image-Edit-2511")
    assert model_entries(settings) == [
        ModelEntry("qwen-image-edit-plus", "tiny:qwen-image-edit-plus"),
        ModelEntry("klein", "tiny:flux2-klein"),
        ModelEntry("Qwen-Image-Edit-2511", "Qwen/Qwen-Image-Edit-2511"),
    ]
    served = served_settings(settings)[1]
    assert (served.model, served.served_name, served.models) == ("tiny:flux2-klein", "klein", None)
    assert served.max_queue == settings.max_queue


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("tiny:flux2,,tiny:flux2-klein", "an empty entry"),
        ("a=tiny:flux2,a=tiny:flux2-klein", "'a' names two models"),
        ("tiny:flux2,tiny:flux2", "'flux2' names two models"),
        ("klein=", "'klein=' has no source"),
        ("bad name=tiny:flux2", "'bad name' cannot be a model name"),
    ],
)
def test_bad_entries_stop_start_up_naming_the_variable_and_the_entry(models, message):
    with pytest.raises(StartupError, match=f"^IMGEDIT_MODELS: .*{message}"):
        model_entries(Settings(models=models))


def test_imgedit_model_and_imgedit_models_are_not_set_together(monkeypatch):
    monkeypatch.setenv("IMGEDIT_MODEL", "tiny:flux2")
    with pytest.raises(StartupError, match=r"^IMGEDIT_MODELS: not with IMGEDIT_MODEL;"):
        model_entries(Settings(models="tiny:flux2-klein"))


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"lora": "x.safetensors"}, "IMGEDIT_LORA"),
        ({"family": "flux2"}, "IMGEDIT_FAMILY"),
        ({"transformer": "t.gguf"}, "IMGEDIT_TRANSFORMER"),
        ({"ulysses_degree": 2}, "IMGEDIT_\\*_DEGREE"),
        ({"cfg_parallel": True}, "IMGEDIT_\\*_DEGREE and IMGEDIT_CFG_PARALLEL"),
    ],
)
def test_settings_of_one_model_are_refused_with_several(setting, named):
    with pytest.raises(StartupError, match=f"^IMGEDIT_MODELS: not with {named}"):
        check_several(Settings(models="tiny:flux2,tiny:flux2-klein", **setting), 2)


def test_a_missing_model_stops_start_up_naming_its_entry(tmp_path):
    settings = Settings(models=f"tiny:qwen-image-edit-plus,gone={tmp_path / 'nothing-here'}", device="cpu")
    with pytest.raises(StartupError, match=r"^IMGEDIT_MODELS: gone: "):
        check_settings(settings)


def test_several_tiny_models_pass_the_checks():
    check_settings(Settings(models="tiny:qwen-image-edit-plus,k=tiny:flux2-klein", device="cpu"))


def test_loras_attach_to_the_model_written_before_their_name_else_to_the_default():
    settings = Settings(
        models="qwen=tiny:qwen-image-edit-plus,black-forest/klein=tiny:flux2-klein",
        lora_adapters="light=/l/a.safetensors:0.5, black-forest/klein/anime = /l/b.safetensors,qwen/x=/l/c",
    )
    qwen, klein = served_settings(settings)
    assert qwen.lora_adapters == "light=/l/a.safetensors:0.5,x=/l/c"
    assert klein.lora_adapters == "anime = /l/b.safetensors"


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ("nobody/anime=/l/b.safetensors", "'nobody/anime=/l/b.safetensors' is for 'nobody', which IMGEDIT_MODELS"),
        ("a=/l/a,klein/a=/l/b", "the name 'a' is taken"),
        ("klein/qwen=/l/b", "the name 'qwen' is taken"),
    ],
)
def test_loras_for_no_served_model_or_with_a_taken_name_are_refused(loras, message):
    settings = Settings(models="qwen=tiny:qwen-image-edit-plus,klein=tiny:flux2-klein", lora_adapters=loras)
    with pytest.raises(StartupError, match=f"^IMGEDIT_LORA_ADAPTERS: {message}"):
        served_settings(settings)


def test_one_model_keeps_its_loras_as_written():
    settings = Settings(model="tiny:flux2-klein", lora_adapters="a=/l/a")
    assert served_settings(settings) == [settings]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(model="tiny:flux2", resident_models=2), "IMGEDIT_RESIDENT_MODELS=2: one model is served"),
        (Settings(models="tiny:flux2,tiny:flux2-klein", resident_models=3), "=3: only 2 models are served"),
        (Settings(models="tiny:flux2,tiny:flux2-klein", offload="model"), "IMGEDIT_MODELS: not with IMGEDIT_OFFLOAD"),
    ],
)
def test_resident_models_beyond_those_served_and_offloading_are_refused(settings, message):
    with pytest.raises(StartupError, match=message):
        check_settings(settings)


def test_models_that_cannot_be_on_the_device_together_stop_start_up_naming_them():
    """Three copies of one tiny model and a device budget with room for one and a half of them: three on the device
    at once is refused naming them, and by default one at a time is served."""
    from imgedit.serving.catalog import load_others
    from imgedit.serving.recipe import ModelRecipe, prepare_model
    from imgedit.weights.memory import GiB
    from imgedit.weights.residency import working_memory

    models = "a=tiny:flux2-klein,b=tiny:flux2-klein,c=tiny:flux2-klein"
    served = served_settings(Settings(models=models, device="cpu", encoding_cache_mb=0))
    first = prepare_model(ModelRecipe.from_settings(served[0]), 0)
    size = sum(first.loaded.parameter_bytes.values())
    budget = (size * 1.5 + working_memory(size)) / GiB
    for wanted in (3, None):
        tight = [each.model_copy(update={"memory_budget_gib": budget, "resident_models": wanted}) for each in served]
        if wanted == 3:
            with pytest.raises(StartupError) as refused:
                load_others(tight, first, 0)
            assert str(refused.value).startswith("IMGEDIT_RESIDENT_MODELS=3: a (")
            assert "b (" in str(refused.value) and "c (" in str(refused.value)
            assert "at most 1 fit at once (IMGEDIT_RESIDENT_MODELS=1)" in str(refused.value)
        else:
            others, residency = load_others(tight, first, 0)
            assert (len(others), residency.slots, residency.resident()) == (2, 1, ["a"])


def test_presets_go_to_the_model_named_before_their_file_else_to_the_default(tmp_path):
    settings = Settings(models="qwen=tiny:qwen-image-edit-plus,klein=tiny:flux2-klein", presets="a.yaml, klein=b.yaml")
    assert [served.presets for served in served_settings(settings)] == ["a.yaml", "b.yaml"]
    odd = tmp_path / "k=v.yaml"  # a file whose name has "=" in it: the first model's
    odd.write_text("low: {}\n")
    assert [served.presets for served in served_settings(settings.model_copy(update={"presets": str(odd)}))] == [
        str(odd),
        None,
    ]
    with pytest.raises(StartupError, match=r"^IMGEDIT_PRESETS: 'kelin=b.yaml': 'kelin' is no served model"):
        served_settings(settings.model_copy(update={"presets": "kelin=b.yaml"}))
    with pytest.raises(StartupError, match=r"^IMGEDIT_PRESETS: 'qwen' is given two files"):
        served_settings(settings.model_copy(update={"presets": "a.yaml,qwen=b.yaml"}))


@pytest.mark.parametrize("written", ["~nobody-here/x=a.yaml", "k" * 5000 + "=a.yaml", "k\x00=a.yaml"])
def test_a_presets_entry_no_file_system_takes_is_refused_in_one_line(written):
    """Found by the ``models`` fuzz target: ``~user`` with no such user raised RuntimeError from pathlib."""
    settings = Settings(models="qwen=tiny:qwen-image-edit-plus,klein=tiny:flux2-klein", presets=written)
    with pytest.raises(StartupError, match=r"^IMGEDIT_PRESETS: .* is no served model"):
        served_settings(settings)
