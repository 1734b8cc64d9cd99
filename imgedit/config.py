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
    """All knobs of the server. The field ``foo_bar`` is read from ``IMGEDIT_FOO_BAR``.

    Each field's docstring is its description on the configuration page (``python -m devtools.doc_tables``).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    # What to serve.
    model: str = Field(DEFAULT_MODEL, min_length=1)
    """Hugging Face repo id, local pipeline directory, `bentoml:NAME[:VERSION]`, or `tiny:<name>` (see Models)."""
    model_revision: str | None = Field(None, min_length=1)
    """Branch, tag or commit of a Hugging Face model (ignored for other sources)."""
    served_model_name: str | None = Field(None, min_length=1, max_length=256)
    """The name in `/v1/models` and accepted as `model`."""
    models: str | None = Field(None, min_length=1)
    """Several models behind one endpoint: comma-separated `SOURCE` or `NAME=SOURCE`, each source as
    `IMGEDIT_MODEL` takes it; a request's `model` picks one, and the first serves requests without it. Not with
    `IMGEDIT_MODEL` (see Models)."""
    resident_models: int | None = Field(None, ge=1, le=64)
    """With `IMGEDIT_MODELS`: how many stay on the device at once, the others waiting in host memory and swapped
    in between runs; by default as many as fit (see Models)."""
    family: str | None = Field(None, min_length=1)
    """Forces a family (see Models), for a pipeline class no family lists."""
    lora: str | None = Field(None, min_length=1)
    """LoRAs every run uses, comma-separated `SOURCE[:SCALE]`: a `.safetensors` file, a directory, `owner/repo` or
    `owner/repo/path/in/repo.safetensors` (see LoRA)."""
    lora_fuse: bool = False
    """Fold `IMGEDIT_LORA` into the weights: no per-step cost, but they can no longer change."""
    lora_adapters: str | None = Field(None, min_length=1)
    """LoRAs requests may choose by name, comma-separated `name=SOURCE[:SCALE]` (see LoRA); with `IMGEDIT_MODELS`,
    `MODEL/name=SOURCE[:SCALE]` attaches one to another model than the first (see Models)."""
    lora_dir: str | None = Field(None, min_length=1)
    """The directory the load endpoint and a request's `lora` path may read LoRAs from; nothing outside it is read."""
    max_loras: int = Field(8, ge=1, le=256)
    """Most LoRAs held at once (registered and loaded while serving)."""
    max_images: int | None = Field(None, ge=1, le=HARD_MAX_IMAGES)
    """Input images per request, up to what the pipeline takes (see Models); a larger value stops start-up."""
    default_steps: int | None = Field(None, ge=1, le=200)
    """Steps when a request sets neither `num_inference_steps` nor `quality` (distilled weights and LoRAs want
    fewer)."""
    default_guidance_scale: float | None = Field(None, ge=0, le=20)
    """`guidance_scale` when a request sets none."""
    default_true_cfg_scale: float | None = Field(None, ge=0, le=20)
    """`true_cfg_scale` when a request sets none (1 turns true CFG off: half the work per step)."""

    # Where and how the model runs.
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """`auto` (CUDA when available), `cuda` or `cpu`. The CPU runs only tiny models at usable speed."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """`auto` (bfloat16 on CUDA, float32 on the CPU), `bfloat16` (`bf16`), `float16` (`fp16`) or `float32`
    (`fp32`). float32 doubles memory and several times the time on a GPU; float16 can overflow in some VAEs."""
    device_map: Literal["none", "balanced"] = "none"
    """`balanced` spreads whole components over all visible GPUs, for a model too large for one; calls still run on
    one GPU at a time. CUDA only; not with offloading."""
    offload: Literal["none", "model", "sequential", "group"] = "none"
    """Keep weights in CPU memory until used: `model` (one component on the GPU at a time), `group` (the denoiser's
    blocks stream in while computing), `sequential` (layer by layer: least memory, several times slower). CUDA
    only (see Quantization and memory)."""
    vae_tiling: bool = False
    """Decode (and encode) in tiles: large outputs fit in less memory, at a small cost in time and possible seams."""
    vae_slicing: bool = False
    """Decode a batch one image at a time: less peak memory for batched calls, no effect on single images."""
    compile: bool = False
    """`torch.compile` the denoiser's repeated blocks (regional compilation): faster steps on a GPU; start-up and
    the first request at each new size pay the compilation (tens of seconds)."""
    attention_backend: (
        Literal[
            "native", "_native_math", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage"
        ]
        | None
    ) = None
    """diffusers' attention kernel: `native`, `_native_math`, `_native_cudnn`, `_native_flash`, `_native_efficient`,
    or `flash`/`_flash_3`/`sage` when flash-attn or sageattention is installed (CUDA). `sage` quantises and may
    change pictures slightly. Kernels downloaded from the hub are never used."""
    cache: Literal["none", "first_block", "taylorseer"] = "none"
    """Reuse computation across denoising steps: `first_block` (FirstBlockCache) or `taylorseer` (predicts blocks'
    outputs between full steps). Faster, slightly different pictures. Transformer families only."""
    cache_threshold: float = Field(0.05, gt=0, le=1)
    """FirstBlockCache: higher skips more steps (faster, lower fidelity)."""
    cache_interval: int = Field(5, ge=1, le=50)
    """TaylorSeer: steps predicted between full computations."""
    encoding_cache_mb: int | None = Field(None, ge=0, le=1_000_000)
    """Megabytes of prompt encodings and reference-image latents kept for the next edits that need them (least
    recently used out first; pictures are the same bytes). 0 turns it off. Qwen-Image-Edit, FLUX.1 Kontext
    (T5) and FLUX.2 families."""
    presets: str | None = Field(None, min_length=1)
    """A YAML or JSON file mapping `quality` levels (`low`, `medium`, `high`, `xhigh`, `max`) to recipes: request
    fields used where a request leaves them unset, and `cfg_until`, `cache`, `cache_threshold`, `cache_interval` for
    those edits alone (see Speed). `auto` runs `high`. With `IMGEDIT_MODELS`, comma-separated `MODEL=FILE` gives
    other models theirs (a plain `FILE` is the first model's)."""
    cfg_until: float = Field(1.0, gt=0, le=1)
    """The fraction of each edit's steps that run classifier-free guidance (`round(fraction x steps)`, from the
    first); later steps run the conditional branch alone, one denoiser call instead of two. 1 guides every step.
    Families that call the denoiser once per branch (Qwen, Kontext, FLUX.2-klein); others refuse a value below 1."""

    # Weights (see Quantization and memory).
    quantize: Literal["none", "int8", "fp8", "nf4"] = "none"
    """Convert weights while loading: `int8` (torchao, weight-only; CPU and CUDA), `fp8` (torchao; CUDA, compute
    capability 8.9+) or `nf4` (bitsandbytes 4-bit; CUDA with `imgedit[nf4]`). A value this machine cannot run stops
    start-up before loading."""
    quantize_components: str | None = Field(None, min_length=1)
    """Comma-separated components `IMGEDIT_QUANTIZE` converts, e.g. `transformer,text_encoder`; a name the
    pipeline lacks, or a component published quantized, stops start-up."""
    transformer: str | None = Field(None, min_length=1)
    """A single file replacing the denoiser: `.gguf` (kept quantized) or `.safetensors`, a local path or
    `owner/repo/path/file.gguf`; configured from `IMGEDIT_MODEL`."""
    memory_check: bool = True
    """Before loading, estimate the model's memory against the device's and refuse, listing settings that would
    fit, when it does not fit; `false` only logs the estimate."""
    memory_budget_gib: float | None = Field(None, gt=0, le=1_000_000)
    """GiB the model may use on the device (to leave room for other processes, or to plan for another card)."""

    # Request limits.
    max_prompt_chars: int = Field(32_000, ge=1, le=1_000_000)
    """Longest `prompt` and `negative_prompt`."""
    max_side: int = Field(4096, ge=64, le=16_384)
    """Longest output side."""
    max_output_pixels: int = Field(2048 * 2048, ge=64 * 64)
    """Largest output area; `size=auto` scales larger inputs down to it."""
    max_input_pixels: int = Field(50_000_000, ge=64 * 64)
    """Largest input image, checked from its header before decoding."""
    max_image_bytes: int = Field(50 * MiB, ge=1024)
    """Largest uploaded image part."""
    max_body_bytes: int = Field(100 * MiB, ge=1024)
    """Largest request body, enforced while it streams in."""
    max_parts: int = Field(64, ge=2, le=10_000)
    """Most parts in one form."""
    max_field_bytes: int = Field(1 * MiB, ge=1024)
    """Largest text field (URL fields may hold a full `data:` image)."""
    body_idle_timeout: float = Field(30.0, gt=0, le=3600)
    """Seconds the server waits for the next piece of a request body; a client that stalls gets 408."""
    body_timeout: float = Field(300.0, gt=0, le=24 * 3600)
    """Seconds a whole request body may take to arrive; a client that trickles gets 408."""
    request_timeout: float = Field(600.0, gt=0, le=24 * 3600)
    """Seconds a request may take, queue time included (the OpenAI SDK waits 600 s); past it the run is stopped and
    the answer is 504."""
    auto_size: Literal["native", "input"] = "native"
    """What `size=auto` makes: `native` is the model's native area at the first image's aspect ratio (see Models);
    `input` is the first image's own size, scaled down to the limits."""

    # Scheduling.
    workers: int | None = Field(None, ge=1, le=64)
    """BentoML workers, each with its own model copy, device(s) and queue."""
    max_queue: int = Field(8, ge=0, le=10_000)
    """Requests that may wait behind the running one, per worker; more get 429."""
    max_batch: int = Field(1, ge=1, le=64)
    """Most waiting requests fused into one batched call (see Serving); 1 never fuses."""
    shutdown_grace: float = Field(600.0, ge=0, le=24 * 3600)
    """Seconds edits in progress may take to finish after SIGTERM before they are stopped."""
    progress_log_seconds: float = Field(30.0, gt=0)
    """Seconds between the info-level progress lines of a long run."""

    # Several ranks per edit (see imgedit.ranks.plans): their product is the ranks, one GPU each.
    ulysses_degree: int = Field(1, ge=1, le=64)
    """Ranks (GPUs) that run each edit together with Ulysses context parallelism: every rank holds all weights and
    a slice of the token sequence; faster, not smaller. Also on the CPU (gloo). See Several GPUs."""
    ring_degree: int = Field(1, ge=1, le=64)
    """The same with ring attention (CUDA only, and an attention backend that returns the log-sum-exp); not with
    `IMGEDIT_ULYSSES_DEGREE`."""
    tp_degree: int = Field(1, ge=1, le=64)
    """Ranks (GPUs) over which tensor parallelism shards the transformer's weights as they are read, for a
    transformer larger than one GPU (CUDA only; not with context parallelism or LoRA)."""
    cfg_parallel: bool = False
    """Run the two branches of classifier-free guidance (conditional and unconditional) on two groups of ranks at
    once: twice the ranks of the degrees above (two GPUs with none set), nearly half the time per step. For
    families with guidance (Qwen-Image-Edit, FLUX.1 Kontext with `true_cfg_scale`, FLUX.2-klein base, the Stable
    Diffusion families); not with `IMGEDIT_TP_DEGREE`. See Several GPUs."""
    rank_timeout: float = Field(300.0, gt=0, le=24 * 3600)
    """Seconds a rank may keep the others waiting in a collective or at a step before the worker gives up on its
    ranks and stops the server."""

    @property
    def ranks_per_edit(self) -> int:
        """Processes that run each pipeline call together: ``IMGEDIT_ULYSSES_DEGREE x RING x TP``, twice that with
        ``IMGEDIT_CFG_PARALLEL``."""
        return self.ulysses_degree * self.ring_degree * self.tp_degree * (2 if self.cfg_parallel else 1)

    # Access.
    api_key: SecretStr | None = None
    """One or several comma-separated keys; when set, `/v1/*` needs `Authorization: Bearer <key>` (the `openai`
    SDK's `api_key`), else 401. Probes and `/metrics` stay open."""
    admin_key: SecretStr | None = None
    """One or several comma-separated keys; when set, `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`
    exist and need one of them as the bearer token."""

    # URL inputs.
    url_fetch: bool = True
    """`false` refuses `http(s)` URLs (`data:` URLs still work)."""
    url_timeout: float = Field(30.0, gt=0, le=600)
    """Seconds to fetch one URL, redirects included."""
    url_max_bytes: int = Field(50 * MiB, ge=1024)
    """Largest fetched or `data:` image."""
    url_max_redirects: int = Field(3, ge=0, le=10)
    """Redirect hops followed; each is checked again."""
    url_allow_private: bool = False
    """`true` allows loopback and private hosts (internal deployments only). Link-local addresses (cloud metadata
    services) stay refused unless `IMGEDIT_URL_ALLOWED_HOSTS` names the host itself."""
    url_allowed_hosts: str | None = None
    """Comma-separated host names that may be fetched (`images.example.com`, `*.cdn.example` for subdomains),
    checked at every redirect hop."""

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """``IMGEDIT_URL_ALLOWED_HOSTS`` as a tuple of lower-case names (empty: any host)."""
        if not self.url_allowed_hosts:
            return ()
        return tuple(host.strip().lower().rstrip(".") for host in self.url_allowed_hosts.split(",") if host.strip())

    # Edits that outlive a connection (see Jobs and links).
    data_dir: str | None = Field(None, min_length=1)
    """The server's data directory: background jobs, kept answers, the key that signs links, and stored images
    unless `IMGEDIT_IMAGE_STORE` says otherwise. Every worker of the server shares it."""
    image_store: str | None = Field(None, min_length=1)
    """Where `response_format=url` images are kept: a directory, served by imgedit through signed links, or
    `s3://bucket/prefix` on any S3-compatible store, behind presigned links."""
    s3_endpoint_url: str | None = Field(None, min_length=1)
    """The S3 API's URL for a store other than AWS (MinIO, SeaweedFS, R2...); credentials and region come from the
    standard `AWS_*` variables."""
    image_url_ttl: int = Field(3600, ge=60, le=7 * 24 * 3600)
    """Seconds a link to an image works (at most 7 days, S3's limit); a synchronous answer's images are deleted
    then."""
    public_url: str | None = Field(None, min_length=1, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    """The base of the links imgedit serves itself (`https://edits.example.com`), behind a proxy that changes the
    host; by default the request's own."""
    job_ttl: int = Field(86400, ge=60, le=30 * 24 * 3600)
    """Seconds a background job, its result and its images are kept after it ends."""
    idempotency_ttl: int = Field(86400, ge=60, le=30 * 24 * 3600)
    """Seconds the answer to an `Idempotency-Key` is kept for retries."""
    webhook_url: str | None = Field(None, min_length=1, max_length=2048)
    """Where every background job's event goes when it ends (a job's own `webhook_url` wins); checked like URL
    inputs (`IMGEDIT_URL_ALLOW_PRIVATE`, `IMGEDIT_URL_ALLOWED_HOSTS`)."""
    webhook_secret: SecretStr | None = None
    """The Standard Webhooks secret that signs events, `whsec_` then base64 of 24 to 64 random bytes; webhooks
    need it."""

    # Output and logging.
    png_compress_level: int = Field(1, ge=0, le=9)
    """zlib level of PNG output, 0 to 9: higher is smaller and slower, never lossy. Level 1 uses imgedit's own
    writer, about three times faster than Pillow's at the same size; higher levels use Pillow."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """`debug`, `info`, `warning` or `error`; prompts appear only at `debug`."""

    @field_validator("log_level", "device", "device_map", "offload", "cache", "auto_size", "quantize", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
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
