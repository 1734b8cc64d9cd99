"""Where LoRAs come from: ``IMGEDIT_LORA=SOURCE[:SCALE],...``, the named ones, and paths under a directory.

A SOURCE is a ``.safetensors`` file, a directory holding one, or a Hugging Face
repo id, optionally followed by the file's path in the repo
(``lightx2v/Qwen-Image-Edit-2511-Lightning/Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors``).
SCALE (default 1) weighs the LoRA. ``IMGEDIT_LORA_FUSE=true`` folds the
LoRAs into the base weights after loading: calls then cost what they cost
without them, but they can no longer be changed. Named LoRAs
(``IMGEDIT_LORA_ADAPTERS=name=SOURCE[:SCALE],...``) are chosen per request; see
:mod:`imgedit.lora.registry`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from imgedit.edit import LORA_NAME
from imgedit.errors import one_line
from imgedit.model.pipeline import Pipeline

_SCALE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class LoraError(Exception):
    """A LoRA cannot be parsed or loaded; the message is one line for the operator."""


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """One LoRA: how it was written, where it is (a directory or a hub repo), which file, and its weight."""

    text: str
    source: str
    weight_name: str | None = None
    subfolder: str | None = None
    scale: float = 1.0


def parse_loras(value: str) -> list[LoraSpec]:
    """The LoRAs named by ``IMGEDIT_LORA``.

    Raises:
        LoraError: an entry is empty or its source cannot be understood.
    """
    specs = []
    for text in (item.strip() for item in value.split(",")):
        if not text:
            raise LoraError(f"empty entry in {value!r}")
        location, scale = text, 1.0
        head, colon, tail = text.rpartition(":")
        if colon and not Path(text).expanduser().exists():
            if not _SCALE.fullmatch(tail.strip()) or ":" in head:
                raise LoraError(f"bad scale {tail.strip()!r} in {text!r}; write SOURCE:SCALE, as in owner/repo:0.8")
            location, scale = head.strip(), float(tail)
        path = Path(location).expanduser()
        if path.is_file():
            specs.append(LoraSpec(text=text, source=str(path.parent), weight_name=path.name, scale=scale))
        elif path.is_dir():
            specs.append(LoraSpec(text=text, source=str(path), scale=scale))
        elif location.startswith((".", "/", "~")):
            raise LoraError(f"{location!r} is neither a file nor a directory")
        else:
            parts = location.split("/")
            if len(parts) < 2 or not all(parts):
                raise LoraError(f"{location!r} is not a path, nor a Hugging Face repo id like owner/name")
            repo, rest = "/".join(parts[:2]), parts[2:]
            specs.append(
                LoraSpec(
                    text=text,
                    source=repo,
                    weight_name=rest[-1] if rest else None,
                    subfolder="/".join(rest[:-1]) or None,
                    scale=scale,
                )
            )
    return specs


def name_for_path(path: str) -> str:
    """A LoRA name for one given only by its path: the file's or directory's name, made safe."""
    stem = Path(path).stem or "adapter"
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip("._-")[:128] or "adapter"


def parse_named_loras(value: str) -> list[tuple[str, LoraSpec]]:
    """The LoRAs of ``IMGEDIT_LORA_ADAPTERS``: ``name=SOURCE[:SCALE]``, comma-separated.

    Raises:
        LoraError: an entry has no name, a bad name, a name used twice, or a source :func:`parse_loras` refuses.
    """
    named: list[tuple[str, LoraSpec]] = []
    if not value.strip():
        return named
    for entry in (item.strip() for item in value.split(",")):
        name, equals, source = entry.partition("=")
        name = name.strip()
        if not equals or not LORA_NAME.fullmatch(name):
            raise LoraError(f"{entry!r} is not name=SOURCE[:SCALE] with a name of letters, digits, '.', '_', '-'")
        if any(name == other for other, _ in named):
            raise LoraError(f"the name {name!r} is used twice")
        (spec,) = parse_loras(source.strip())
        named.append((name, spec))
    return named


def spec_in_directory(directory: str | None, path: str, scale: float = 1.0) -> LoraSpec:
    """The LoRA at ``path`` under ``directory`` (``IMGEDIT_LORA_DIR``), or a hub repo when ``path`` is one.

    Nothing outside the directory is read: absolute paths elsewhere, ``..`` and
    links that lead out are refused.

    Raises:
        LoraError: the path leaves the directory, does not exist, or no directory is configured.
    """
    if directory is None:
        raise LoraError("loading adapters from paths needs IMGEDIT_LORA_DIR")
    root = Path(directory).resolve()
    candidate = Path(path)
    target = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if ".." in candidate.parts or not target.is_relative_to(root):
        raise LoraError(f"{path!r} is outside IMGEDIT_LORA_DIR")
    if target.is_file():
        return LoraSpec(text=path, source=str(target.parent), weight_name=target.name, scale=scale)
    if target.is_dir():
        return LoraSpec(text=path, source=str(target), scale=scale)
    if not candidate.is_absolute() and len(candidate.parts) >= 2 and not path.startswith("."):
        (spec,) = parse_loras(path)  # owner/repo[/file]: from the Hugging Face hub, when it can be reached
        return dataclasses.replace(spec, scale=scale)
    raise LoraError(f"{path!r} does not exist under IMGEDIT_LORA_DIR")


@runtime_checkable
class LoraPipeline(Protocol):
    """A pipeline that takes LoRAs: what imgedit calls of diffusers' LoRA loader methods."""

    def load_lora_weights(self, source: str, adapter_name: str | None = None, **options: Any) -> None: ...

    def set_adapters(self, adapter_names: list[str], adapter_weights: list[float] | None = None) -> None: ...

    def delete_adapters(self, adapter_names: str) -> None: ...

    def get_list_adapters(self) -> dict[str, list[str]]: ...

    def enable_lora(self) -> None: ...

    def disable_lora(self) -> None: ...

    def fuse_lora(self, adapter_names: list[str]) -> None: ...

    def unload_lora_weights(self) -> None: ...


def takes_loras(pipeline: Pipeline) -> LoraPipeline:
    """``pipeline``, as one that takes LoRAs.

    Raises:
        LoraError: it takes none.
    """
    if not isinstance(pipeline, LoraPipeline):
        raise LoraError(f"{type(pipeline).__name__} does not take LoRA adapters")
    return pipeline


def load_lora(pipeline: Pipeline, name: str, spec: LoraSpec) -> None:
    """Load ``spec`` into ``pipeline`` as the LoRA ``name``, unfused.

    Raises:
        LoraError: the pipeline takes no LoRA, or this one fails to load.
    """
    loras = takes_loras(pipeline)
    options = {key: item for key, item in (("weight_name", spec.weight_name), ("subfolder", spec.subfolder)) if item}
    try:
        loras.load_lora_weights(spec.source, adapter_name=name, **options)
    except Exception as exc:  # peft, safetensors and the hub raise many kinds
        raise LoraError(f"cannot load {spec.text!r}: {one_line(exc)}") from None


def apply_loras(pipeline: Pipeline, value: str | None, *, fuse: bool) -> list[str]:
    """Load the LoRAs of ``value`` into ``pipeline`` (and fuse them when asked); return their names.

    Raises:
        LoraError: the pipeline takes no LoRA, or one fails to load.
    """
    if not value:
        return []
    specs = parse_loras(value)
    loras = takes_loras(pipeline)
    names = []
    for index, spec in enumerate(specs):
        names.append(f"lora{index}")
        load_lora(pipeline, names[-1], spec)
    loras.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
    if fuse:
        loras.fuse_lora(adapter_names=names)
        loras.unload_lora_weights()
    return names
