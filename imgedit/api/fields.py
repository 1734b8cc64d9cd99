"""The fields of ``POST /v1/images/edits``, declared once: the API's contract.

Each :class:`Field` says its name, type, bounds, default, description and the
model families that use it. Everything else is made from this table: the body
parser (:mod:`imgedit.api.parse`), the OpenAPI bodies published at ``/docs.json``
(:mod:`imgedit.api.openapi`) and the parameter table on the docs' API page
(:func:`markdown_table`; ``python -m devtools.doc_tables --write`` puts it
there, and a test keeps the page equal to it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from imgedit.edit import MAX_SEED, EditOptions

#: How a field travels: files, lists of strings, or one scalar of a JSON-like type.
Kind = Literal["images", "urls", "file", "text", "integer", "number", "boolean", "choice", "size", "lora"]

#: The model families (``IMGEDIT_FAMILY`` names) that take negative prompts.
_NEGATIVE_PROMPT_FAMILIES = (
    "qwen-image-edit-plus",
    "qwen-image-edit",
    "flux-kontext",
    "flux2-klein",
    "instruct-pix2pix",
    "stable-diffusion",
)
#: Longest text of a scalar field that is not free text (a number, a choice, a flag).
SCALAR_MAX_CHARS = 100


@dataclass(frozen=True, kw_only=True)
class Field:
    """One field of the edit request.

    Attributes:
        name: the multipart part name (and JSON key).
        kind: its type on the wire.
        description: what it does, in one or two sentences.
        default: the value when absent; None means unset (a family's or the server's default applies).
        shown_default: the default as documented when it is not a literal value.
        low: the smallest number accepted.
        high: the largest number accepted.
        choices: the values accepted, for ``choice`` fields.
        aliases: other spellings accepted for a choice, and the value each means.
        max_chars: the longest text accepted; None for prompts (``IMGEDIT_MAX_PROMPT_CHARS``).
        also: other part names accepted for the same field (``image[]``).
        json_name: its key in a JSON body, when not ``name``.
        families: the families whose edits the field changes; None for every family,
            or for a field that is not the model's (output encoding, streaming...).
        required: whether a request must carry it.
    """

    name: str
    kind: Kind
    description: str
    default: Any = None
    shown_default: str | None = None
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    max_chars: int | None = SCALAR_MAX_CHARS
    also: tuple[str, ...] = ()
    json_name: str | None = None
    families: tuple[str, ...] | None = None
    required: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Every part name that carries this field."""
        return (self.name, *self.also)

    @property
    def key(self) -> str:
        """Its key in a JSON body."""
        return self.json_name or self.name

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every accepted value of a choice, aliases included, in documented order."""
        return self.choices + tuple(alias for alias, _ in self.aliases)


FIELDS: tuple[Field, ...] = (
    Field(
        name="image",
        kind="images",
        description=(
            "Image(s) to edit: PNG, JPEG, WebP, BMP, TIFF or GIF (first frame), detected from the bytes; filename and "
            "part type are ignored, EXIF rotation is applied. Any mix of `image` and `image[]`, in arrival order. In "
            'JSON: `images`, a list of `{"image_url": URL}`.'
        ),
        also=("image[]",),
        json_name="images",
    ),
    Field(
        name="url",
        kind="urls",
        description=(
            "Image URLs, `http(s)://` or `data:image/...;base64,...`, used after the uploads (in JSON: a string or a "
            "list)."
        ),
        also=("url[]",),
        max_chars=None,
    ),
    Field(
        name="prompt",
        kind="text",
        description=(
            "What to change, kept verbatim. At most `IMGEDIT_MAX_PROMPT_CHARS` characters, and no more tokens than the "
            "model takes (about 4,000 for Qwen, the vision tokens of the images included)."
        ),
        required=True,
        max_chars=None,
    ),
    Field(
        name="model",
        kind="text",
        description=(
            "The served name or the full model id; with several models (`IMGEDIT_MODELS`), the one that runs. "
            "A LoRA's name runs its model with it."
        ),
        shown_default="served model",
        max_chars=256,
    ),
    Field(
        name="n", kind="integer", description="Images to make; image *i* uses seed + *i*.", default=1, low=1, high=10
    ),
    Field(
        name="size",
        kind="size",
        description=(
            "`auto` (the model's native area, about 1 MP, at the first image's aspect ratio; the first image's own size"
            " with `IMGEDIT_AUTO_SIZE=input`) or `WxH` (`x` or `X`), each side 64 to `IMGEDIT_MAX_SIDE`, area at most "
            "`IMGEDIT_MAX_OUTPUT_PIXELS`. Rounded to the model's multiple (16 for Qwen); the response reports the size "
            "produced."
        ),
        default="auto",
        max_chars=64,
    ),
    Field(
        name="response_format",
        kind="choice",
        description=(
            "`b64_json`: each image as base64 in the body. `url`: each image as a link that works without an API key "
            "until `IMGEDIT_IMAGE_URL_TTL` runs out (see Jobs and links). Not with `stream`."
        ),
        default="b64_json",
        choices=("b64_json", "url"),
    ),
    Field(
        name="output_format",
        kind="choice",
        description="The encoding of the output images.",
        default="png",
        choices=("png", "jpeg", "webp"),
        aliases=(("jpg", "jpeg"),),
    ),
    Field(
        name="output_compression",
        kind="integer",
        description="JPEG and WebP quality; PNG is always lossless.",
        default=100,
        low=0,
        high=100,
    ),
    Field(
        name="background",
        kind="choice",
        description=(
            "`transparent` copies the first image's alpha into the output (not with JPEG, which has no alpha); `opaque`"
            " writes no alpha; `auto` keeps alpha when the first image had transparency."
        ),
        default="auto",
        choices=("auto", "transparent", "opaque"),
    ),
    Field(
        name="quality",
        kind="choice",
        description=(
            "`low`, `medium`, `high`, `xhigh` and `max` run 1/4, 1/2, 1, 1.5 and 2 times the model's default steps (at "
            "most 200), or the recipe `IMGEDIT_PRESETS` gives the level (see Speed); `auto` and `standard` run `high`. "
            "The response reports the level that ran."
        ),
        default="auto",
        choices=("auto", "low", "medium", "high", "xhigh", "max"),
        aliases=(("standard", "auto"),),
    ),
    Field(
        name="input_fidelity",
        kind="choice",
        description=(
            "How closely the output keeps the input: InstructPix2Pix's `image_guidance_scale` (`high` 2, `low` 1.2), "
            "Stable Diffusion's img2img `strength` (`high` 0.5, `low` 0.9); an explicit value of either wins. The other"
            " families have no such knob: it changes nothing there."
        ),
        shown_default="family default",
        choices=("high", "low"),
        families=("instruct-pix2pix", "stable-diffusion"),
    ),
    Field(
        name="moderation",
        kind="choice",
        description="Accepted and checked for OpenAI compatibility; this server does no content moderation.",
        default="auto",
        choices=("auto", "low"),
    ),
    Field(name="user", kind="text", description="Accepted; logged at debug level only.", max_chars=512),
    Field(
        name="safety_identifier",
        kind="text",
        description="OpenAI's successor of `user`: accepted, logged at debug level only.",
        max_chars=512,
    ),
    Field(
        name="mask",
        kind="file",
        description=(
            "OpenAI's mask: an image the size of the first one whose fully transparent pixels (alpha 0) mark where to "
            "edit. Works on every family (see Models)."
        ),
    ),
    Field(
        name="negative_prompt",
        kind="text",
        description=(
            'What to steer away from. With Qwen and `true_cfg_scale` > 1, `" "` is used when none is given (the model '
            "card's advice)."
        ),
        max_chars=None,
        families=_NEGATIVE_PROMPT_FAMILIES,
    ),
    Field(
        name="num_inference_steps",
        kind="integer",
        description="Denoising steps; wins over `quality`.",
        shown_default="family default (see Models)",
        low=1,
        high=200,
    ),
    Field(
        name="guidance_scale",
        kind="number",
        description="Guidance strength (for Qwen, only guidance-distilled checkpoints use it).",
        shown_default="family default",
        low=0,
        high=20,
    ),
    Field(
        name="true_cfg_scale",
        kind="number",
        description="True classifier-free guidance: above 1 it runs the negative prompt too (twice the work per step).",
        shown_default="family default",
        low=0,
        high=20,
        families=("qwen-image-edit-plus", "qwen-image-edit", "flux-kontext"),
    ),
    Field(
        name="image_guidance_scale",
        kind="number",
        description="How closely to follow the input image.",
        shown_default="1.5",
        low=0,
        high=20,
        families=("instruct-pix2pix",),
    ),
    Field(
        name="strength",
        kind="number",
        description="How much of the image is re-noised: img2img always, the others when they inpaint a mask.",
        shown_default="family default",
        low=0,
        high=1,
        families=("qwen-image-edit", "flux-kontext", "flux2-klein", "stable-diffusion"),
    ),
    Field(
        name="seed", kind="integer", description="The first image's seed.", shown_default="random", low=0, high=MAX_SEED
    ),
    Field(
        name="lora",
        kind="lora",
        description=(
            "LoRA adapters to run with, by name (see LoRA adapters): `name`, `name:scale` or several (`a:1,b:0.5`); in "
            'JSON also a list of `{"name", "scale"}`; vLLM-Omni\'s object form too. A `model` that names an adapter '
            "selects it at its loaded scale."
        ),
        shown_default="none",
        max_chars=2048,
    ),
    Field(name="stream", kind="boolean", description="Answer with server-sent events (see Streaming).", default=False),
    Field(
        name="partial_images",
        kind="integer",
        description="Previews per output image while streaming.",
        default=0,
        low=0,
        high=3,
    ),
    Field(
        name="webhook_url",
        kind="text",
        description=(
            "For a background job (`Prefer: respond-async`): where its signed event goes when it ends; wins over "
            "`IMGEDIT_WEBHOOK_URL` (see Jobs and links)."
        ),
        shown_default="`IMGEDIT_WEBHOOK_URL`",
        max_chars=2048,
    ),
)

FIELDS_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}
#: The fields that change what the model makes: its inputs and :class:`~imgedit.edit.EditOptions`.
#: The others only change how the server answers (encoding, streaming, logs).
MODEL_FIELDS = frozenset({"image", "url", "mask", "size", *(option.name for option in dataclasses.fields(EditOptions))})


# -- the table on the API page ---------------------------------------------------------------

_TYPES = {
    "images": "file(s)",
    "urls": "string(s)",
    "file": "file",
    "text": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "choice": "string",
    "size": "string",
    "lora": "string (or JSON list)",
}


def markdown_table() -> str:
    """The API page's parameter table of ``POST /v1/images/edits``, in Markdown."""
    rows = ["| Field | Type | Default | Values | Used by | Notes |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {_names(field)} | {_TYPES[field.kind]} | {_default(field)} | {_values(field)} "
        f"| {_families(field)} | {field.description} |"
        for field in FIELDS
    ]
    return "\n".join(rows) + "\n"


def _names(field: Field) -> str:
    return " / ".join(f"`{name}`" for name in field.names)


def _default(field: Field) -> str:
    if field.required:
        return "required"
    if field.shown_default is not None:
        return field.shown_default
    if field.default is None:
        return ""
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`" if isinstance(field.default, str) else str(field.default)


def _values(field: Field) -> str:
    if field.kind == "choice":
        aliases = dict(field.aliases)
        named = [f"`{choice}`" for choice in field.choices]
        return ", ".join(named) + "".join(f" (`{alias}` = `{meaning}`)" for alias, meaning in aliases.items())
    if field.low is not None and field.high is not None:
        high = "2^64-1" if field.high == MAX_SEED else f"{field.high:g}"
        return f"{field.low:g} to {high}"
    if field.kind == "text" and field.max_chars is not None:
        return f"at most {field.max_chars} characters"
    return ""


def _families(field: Field) -> str:
    if field.families is not None:
        return ", ".join(f"`{family}`" for family in field.families)
    return "all" if field.name in MODEL_FIELDS else ""


if __name__ == "__main__":
    print(markdown_table(), end="")
