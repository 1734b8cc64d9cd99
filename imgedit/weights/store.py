"""Copy a diffusers pipeline into the BentoML model store (``imgedit import-model``).

A model in the store is served with ``IMGEDIT_MODEL=bentoml:NAME``, and
``bentoml build`` packs it into the Bento, so a container started from that
Bento needs no Hugging Face hub. The source is a local pipeline directory, or a
hub repo id whose snapshot is taken from the Hugging Face cache (downloading
what is missing, unless ``HF_HUB_OFFLINE`` forbids it). Files are hard-linked
from the cache when it is on the same file system, and copied otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from tqdm import tqdm

from imgedit.errors import one_line

_SKIPPED = {".git", ".cache"}
#: BentoML's rule for model names.
_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
_CHUNK = 8 * 1024 * 1024


class ModelImportError(Exception):
    """The source cannot be imported; the message is one line for the user."""


def import_model(source: str, name: str, revision: str | None = None, progress: bool = True) -> str:
    """Copy ``source`` into the store as ``name``; return the new model's tag.

    Raises:
        ModelImportError: the source is not a diffusers pipeline, or cannot be had.
    """
    import bentoml

    if not _NAME.fullmatch(name):
        raise ModelImportError(
            f"--name {name!r} is not a valid model name: use lowercase letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit"
        )
    directory = _snapshot(source, revision)
    index = directory / "model_index.json"
    if not index.is_file():
        raise ModelImportError(f"{source!r} is not a diffusers pipeline: it has no model_index.json")
    pipeline_class = json.loads(index.read_text()).get("_class_name", "?")
    files = [
        path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not _SKIPPED & set(path.relative_to(directory).parts)
    ]
    total = sum(path.stat().st_size for path in files)
    metadata = {"source": source, "revision": revision or "", "pipeline": pipeline_class}
    with (
        bentoml.models.create(name, labels={"imported-by": "imgedit"}, metadata=metadata) as model,
        tqdm(total=total, unit="B", unit_scale=True, desc=f"importing {name}", disable=not progress) as bar,
    ):
        for path in files:
            target = Path(model.path) / path.relative_to(directory)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path.resolve(), target, bar)
    return str(model.tag)


def _snapshot(source: str, revision: str | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith((".", "/", "~")):
        raise ModelImportError(f"{source!r} is not a directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        raise ModelImportError(f"cannot get {source!r} from the Hugging Face hub or cache: {one_line(exc)}") from None


def _link_or_copy(source: Path, target: Path, bar: tqdm) -> None:
    try:
        os.link(source, target)
        bar.update(source.stat().st_size)
        return
    except OSError:  # another file system, or links not allowed: copy instead
        pass
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
            bar.update(len(chunk))
    shutil.copystat(source, target)
