"""LoRA adapters loaded at start-up: ``IMGEDIT_LORA=SOURCE[:SCALE],...``.

A SOURCE is a ``.safetensors`` file, a directory holding one, or a Hugging Face
repo id, optionally followed by the file's path in the repo
(``lightx2v/Qwen-Image-Edit-2511-Lightning/Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors``).
SCALE (default 1) weighs the adapter. ``IMGEDIT_LORA_FUSE=true`` folds the
adapters into the base weights after loading: calls then cost what they cost
without LoRA, but the adapters can no longer be changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgedit.errors import one_line

_SCALE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class LoraError(Exception):
    """A LoRA adapter cannot be parsed or loaded; the message is one line for the operator."""


@dataclass(frozen=True)
class LoraSpec:
    """One adapter: where it is, which file, and its weight."""

    text: str
    source: str
    weight_name: str | None = None
    subfolder: str | None = None
    scale: float = 1.0


def parse_loras(value: str) -> list[LoraSpec]:
    """The adapters named by ``IMGEDIT_LORA``.

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
            specs.append(LoraSpec(text, str(path.parent), weight_name=path.name, scale=scale))
        elif path.is_dir():
            specs.append(LoraSpec(text, str(path), scale=scale))
        elif location.startswith((".", "/", "~")):
            raise LoraError(f"{location!r} is neither a file nor a directory")
        else:
            parts = location.split("/")
            if len(parts) < 2 or not all(parts):
                raise LoraError(f"{location!r} is not a path, nor a Hugging Face repo id like owner/name")
            repo, rest = "/".join(parts[:2]), parts[2:]
            specs.append(
                LoraSpec(
                    text,
                    repo,
                    weight_name=rest[-1] if rest else None,
                    subfolder="/".join(rest[:-1]) or None,
                    scale=scale,
                )
            )
    return specs


def apply_loras(pipeline: Any, value: str | None, *, fuse: bool) -> list[str]:
    """Load the adapters of ``value`` into ``pipeline`` (and fuse them when asked); return their names.

    Raises:
        LoraError: the pipeline takes no LoRA, or an adapter fails to load.
    """
    if not value:
        return []
    specs = parse_loras(value)
    if not hasattr(pipeline, "load_lora_weights"):
        raise LoraError(f"{type(pipeline).__name__} does not take LoRA adapters")
    names = []
    for index, spec in enumerate(specs):
        name = f"lora{index}"
        options = {
            key: item for key, item in (("weight_name", spec.weight_name), ("subfolder", spec.subfolder)) if item
        }
        try:
            pipeline.load_lora_weights(spec.source, adapter_name=name, **options)
        except Exception as exc:  # peft, safetensors and the hub raise many kinds
            raise LoraError(f"cannot load {spec.text!r}: {one_line(exc)}") from None
        names.append(name)
    pipeline.set_adapters(names, adapter_weights=[spec.scale for spec in specs])
    if fuse:
        pipeline.fuse_lora(adapter_names=names)
        pipeline.unload_lora_weights()
    return names
