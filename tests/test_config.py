from __future__ import annotations

import pytest

from imgedit.config import ConfigError, Settings, load_settings, unknown_variables


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for key in list(os.environ):
        if key.upper().startswith("IMGEDIT_"):
            monkeypatch.delenv(key)


def test_defaults_serve_qwen_image_edit_2511():
    settings = load_settings()
    assert settings.model == "Qwen/Qwen-Image-Edit-2511"
    assert settings.served_name == "Qwen-Image-Edit-2511"
    assert settings.request_timeout == 600
    assert settings.max_body_bytes == 100 * 1024 * 1024
    assert settings.url_allow_private is False


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("IMGEDIT_MAX_IMAGES", "abc", "IMGEDIT_MAX_IMAGES: Input should be a valid integer"),
        ("IMGEDIT_MAX_IMAGES", "17", "IMGEDIT_MAX_IMAGES: Input should be less than or equal to 16"),
        ("IMGEDIT_REQUEST_TIMEOUT", "-1", "IMGEDIT_REQUEST_TIMEOUT: Input should be greater than 0"),
        ("IMGEDIT_URL_ALLOW_PRIVATE", "perhaps", "IMGEDIT_URL_ALLOW_PRIVATE: Input should be a valid boolean"),
        ("IMGEDIT_DEVICE", "tpu", "IMGEDIT_DEVICE: Input should be 'auto', 'cuda' or 'cpu'"),
        ("imgedit_log_level", "loud", "IMGEDIT_LOG_LEVEL: Input should be"),
        ("IMGEDIT_CFG_UNTIL", "0", "IMGEDIT_CFG_UNTIL: Input should be greater than 0"),
        ("IMGEDIT_CFG_UNTIL", "1.5", "IMGEDIT_CFG_UNTIL: Input should be less than or equal to 1"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(expected)
    assert repr(value) in message
    assert "\n" not in message


def test_values_are_parsed_and_normalised(monkeypatch):
    monkeypatch.setenv("IMGEDIT_MODEL", " tiny:qwen-image-edit-plus ")
    monkeypatch.setenv("IMGEDIT_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("IMGEDIT_URL_FETCH", "false")
    monkeypatch.setenv("IMGEDIT_MAX_IMAGES", "2")
    monkeypatch.setenv("IMGEDIT_DEFAULT_STEPS", "")  # empty means unset
    settings = load_settings()
    assert settings.model == "tiny:qwen-image-edit-plus"
    assert settings.served_name == "qwen-image-edit-plus"
    assert settings.log_level == "debug"
    assert settings.url_fetch is False
    assert settings.max_images == 2
    assert settings.default_steps is None


@pytest.mark.parametrize(
    ("model", "served"),
    [
        ("Qwen/Qwen-Image-Edit-2511", "Qwen-Image-Edit-2511"),
        ("/models/my-edit/", "my-edit"),
        ("tiny:qwen-image-edit-plus", "qwen-image-edit-plus"),
    ],
)
def test_served_name_defaults_to_the_last_segment(model, served):
    assert Settings(model=model).served_name == served


def test_served_name_can_be_set(monkeypatch):
    monkeypatch.setenv("IMGEDIT_SERVED_MODEL_NAME", "editor")
    assert load_settings().served_name == "editor"


def test_unknown_variables_are_reported(monkeypatch):
    monkeypatch.setenv("IMGEDIT_MODLE", "x")
    monkeypatch.setenv("IMGEDIT_MODEL", "y")
    assert unknown_variables() == ["IMGEDIT_MODLE"]


def test_every_setting_is_described_for_the_configuration_page():
    from devtools.doc_tables import SHOWN_DEFAULTS, settings_table

    undescribed = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert undescribed == []
    assert set(SHOWN_DEFAULTS) <= set(Settings.model_fields)
    table = settings_table()
    assert all(f"| `IMGEDIT_{name.upper()}` |" in table for name in Settings.model_fields)


@pytest.mark.parametrize(
    ("value", "dtype"), [("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32"), ("bfloat16", "bfloat16")]
)
def test_dtype_accepts_the_short_spellings(monkeypatch, value, dtype):
    monkeypatch.setenv("IMGEDIT_DTYPE", value)
    assert load_settings().dtype == dtype


def test_bento_arguments_are_settings_and_the_environment_wins(monkeypatch):
    from bentoml._internal.utils.args import set_arguments

    set_arguments({"model": "tiny:flux2", "max_queue": "3", "typo_setting": "1"})
    try:
        settings = load_settings()
        assert (settings.model, settings.max_queue) == ("tiny:flux2", 3)
        assert unknown_variables() == ["--arg typo_setting"]
        monkeypatch.setenv("IMGEDIT_MODEL", "tiny:qwen-image-edit")
        assert load_settings().model == "tiny:qwen-image-edit"
        set_arguments({"max_queue": "many"})
        with pytest.raises(ConfigError, match=r"^--arg max_queue: Input should be a valid integer.*\(got 'many'\)"):
            load_settings()
    finally:
        set_arguments({})
