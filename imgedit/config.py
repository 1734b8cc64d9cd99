"""Server configuration, read once from ``IMGEDIT_*`` environment variables.

Every setting is validated at start-up; :func:`load_settings` turns the first
problem into a :class:`ConfigError` whose message is one line naming the
variable, so a typo stops the server before any model is loaded.

A Bento can carry settings too: ``bentoml build --arg model=bentoml:NAME``
records them in the Bento, and every process serving it (``bentoml serve
TAG``, its container) starts with them. Environment variables still win.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from imgedit.edit import HARD_MAX_IMAGES

ENV_PREFIX = "IMGEDIT_"
DEFAULT_MODEL = "Qwen/Qwen-Image-Edit-2511"
MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration value is invalid; the message is one line naming the variable."""


class Settings(BaseSettings):
    """All knobs of the server. The field ``foo_bar`` is read from ``IMGEDIT_FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    # What to serve.
    model: str = Field(DEFAULT_MODEL, min_length=1)
    model_revision: str | None = Field(None, min_length=1)
    served_model_name: str | None = Field(None, min_length=1, max_length=256)
    family: str | None = Field(None, min_length=1)
    lora: str | None = Field(None, min_length=1)
    lora_fuse: bool = False
    lora_adapters: str | None = Field(None, min_length=1)
    lora_dir: str | None = Field(None, min_length=1)
    max_loras: int = Field(8, ge=1, le=256)
    max_images: int | None = Field(None, ge=1, le=HARD_MAX_IMAGES)
    default_steps: int | None = Field(None, ge=1, le=200)
    default_guidance_scale: float | None = Field(None, ge=0, le=20)
    default_true_cfg_scale: float | None = Field(None, ge=0, le=20)

    # Where and how the model runs.
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device_map: Literal["none", "balanced"] = "none"
    offload: Literal["none", "model", "sequential", "group"] = "none"
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: bool = False
    attention_backend: (
        Literal[
            "native", "_native_math", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage"
        ]
        | None
    ) = None
    cache: Literal["none", "first_block", "taylorseer"] = "none"
    cache_threshold: float = Field(0.05, gt=0, le=1)
    cache_interval: int = Field(5, ge=1, le=50)

    # Weights: quantization, a single-file denoiser, the memory check (see imgedit/weights/quantization.py, memory.py).
    quantize: Literal["none", "int8", "fp8", "nf4"] = "none"
    quantize_components: str | None = Field(None, min_length=1)
    transformer: str | None = Field(None, min_length=1)
    memory_check: bool = True
    memory_budget_gib: float | None = Field(None, gt=0, le=1_000_000)

    # Request limits.
    max_prompt_chars: int = Field(32_000, ge=1, le=1_000_000)
    max_side: int = Field(4096, ge=64, le=16_384)
    max_output_pixels: int = Field(2048 * 2048, ge=64 * 64)
    max_input_pixels: int = Field(50_000_000, ge=64 * 64)
    max_image_bytes: int = Field(50 * MiB, ge=1024)
    max_body_bytes: int = Field(100 * MiB, ge=1024)
    max_parts: int = Field(64, ge=2, le=10_000)
    max_field_bytes: int = Field(1 * MiB, ge=1024)
    body_idle_timeout: float = Field(30.0, gt=0, le=3600)
    body_timeout: float = Field(300.0, gt=0, le=24 * 3600)
    request_timeout: float = Field(600.0, gt=0, le=24 * 3600)
    auto_size: Literal["native", "input"] = "native"

    # Scheduling.
    workers: int | None = Field(None, ge=1, le=64)
    max_queue: int = Field(8, ge=0, le=10_000)
    max_batch: int = Field(1, ge=1, le=64)
    shutdown_grace: float = Field(600.0, ge=0, le=24 * 3600)
    progress_log_seconds: float = Field(30.0, gt=0)

    # Several ranks per edit (see imgedit.ranks.plans): their product is the ranks, one GPU each.
    ulysses_degree: int = Field(1, ge=1, le=64)
    ring_degree: int = Field(1, ge=1, le=64)
    tp_degree: int = Field(1, ge=1, le=64)
    rank_timeout: float = Field(300.0, gt=0, le=24 * 3600)

    @property
    def ranks_per_edit(self) -> int:
        """Processes that run each pipeline call together: ``IMGEDIT_ULYSSES_DEGREE x RING x TP``."""
        return self.ulysses_degree * self.ring_degree * self.tp_degree

    # Access.
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None

    # URL inputs.
    url_fetch: bool = True
    url_timeout: float = Field(30.0, gt=0, le=600)
    url_max_bytes: int = Field(50 * MiB, ge=1024)
    url_max_redirects: int = Field(3, ge=0, le=10)
    url_allow_private: bool = False
    url_allowed_hosts: str | None = None

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """``IMGEDIT_URL_ALLOWED_HOSTS`` as a tuple of lower-case names (empty: any host)."""
        if not self.url_allowed_hosts:
            return ()
        return tuple(host.strip().lower().rstrip(".") for host in self.url_allowed_hosts.split(",") if host.strip())

    # Output and logging.
    png_compress_level: int = Field(1, ge=0, le=9)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", "device", "device_map", "offload", "cache", "auto_size", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize_lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("quantize_components", mode="after")
    @classmethod
    def _component_names(cls, value: str | None) -> str | None:
        if value is not None and not all(name.strip().isidentifier() for name in value.split(",")):
            raise ValueError("expected comma-separated component names, as in transformer,text_encoder")
        return value

    @property
    def quantized_component_names(self) -> tuple[str, ...]:
        """``IMGEDIT_QUANTIZE_COMPONENTS`` as a tuple of names (empty: the default, the denoiser)."""
        if not self.quantize_components:
            return ()
        return tuple(dict.fromkeys(name.strip() for name in self.quantize_components.split(",")))

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_aliases(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(value, value)

    @field_validator("model", "served_model_name", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: explicit values, then the environment, then the Bento's arguments.
        return init_settings, env_settings, _BentoArguments(settings_cls)

    @property
    def served_name(self) -> str:
        """The name clients see in ``/v1/models`` and may send as ``model``.

        Defaults to the last segment of :attr:`model`, so ``Qwen/Qwen-Image-Edit-2511``
        is served as ``Qwen-Image-Edit-2511`` (the name the API spec's examples use).
        """
        if self.served_model_name:
            return self.served_model_name
        tail = self.model.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
        return tail or self.model


def load_settings() -> Settings:
    """Read and validate the settings from the environment.

    Raises:
        ConfigError: naming the first offending variable and the value it holds.
    """
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "*"
        variable = ENV_PREFIX + field.upper()
        raw: object = _environ_value(variable)
        if raw is None and field in bento_arguments():  # it came from the Bento's arguments
            variable, raw = f"--arg {field}", bento_arguments()[field]
        shown = f" (got {raw!r})" if raw is not None else ""
        raise ConfigError(f"{variable}: {error['msg']}{shown}") from None


def unknown_variables() -> list[str]:
    """``IMGEDIT_*`` variables and Bento arguments that no setting reads: most likely typos."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    variables = [key for key in os.environ if key.upper().startswith(ENV_PREFIX) and key.upper() not in known]
    arguments = [f"--arg {name}" for name in bento_arguments() if name not in Settings.model_fields]
    return sorted(variables) + sorted(arguments)


def _environ_value(variable: str) -> str | None:
    return next((value for key, value in os.environ.items() if key.upper() == variable), None)


class _BentoArguments(PydanticBaseSettingsSource):
    """Settings given as ``bentoml build``/``serve`` arguments (``--arg model=...``)."""

    def get_field_value(self, field: object, field_name: str) -> tuple[object, str, bool]:
        return None, field_name, False  # unused: __call__ reads every argument at once

    def __call__(self) -> dict[str, object]:
        return {name: value for name, value in bento_arguments().items() if name in self.settings_cls.model_fields}


def bento_arguments() -> dict[str, object]:
    """The arguments of the Bento being built or served (empty outside ``bentoml``)."""
    try:
        import bentoml

        return dict(vars(bentoml.use_arguments()))
    except Exception:  # no BentoML context: no arguments
        return {}
