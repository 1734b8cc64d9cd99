import pytest

from imgedit.config import Settings
from imgedit.errors import StartupError
from imgedit.serving.catalog import ModelEntry, check_several, entry_settings, model_entries
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
    served = entry_settings(settings, model_entries(settings)[1])
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
        check_several(Settings(models="tiny:flux2,tiny:flux2-klein", **setting))


def test_a_missing_model_stops_start_up_naming_its_entry(tmp_path):
    settings = Settings(models=f"tiny:qwen-image-edit-plus,gone={tmp_path / 'nothing-here'}", device="cpu")
    with pytest.raises(StartupError, match=r"^IMGEDIT_MODELS: gone: "):
        check_settings(settings)


def test_several_tiny_models_pass_the_checks():
    check_settings(Settings(models="tiny:qwen-image-edit-plus,k=tiny:flux2-klein", device="cpu"))
