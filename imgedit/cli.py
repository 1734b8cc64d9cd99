"""The ``imgedit`` command line: ``imgedit import-model SRC --name NAME`` and ``imgedit export-tiny NAME DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgedit", description="imgedit tools")
    commands = parser.add_subparsers(dest="command", required=True)
    importer = commands.add_parser(
        "import-model",
        help="copy a diffusers pipeline into the BentoML model store",
        description="Copy a Hugging Face repo (from the cache or the hub) or a local pipeline directory into the "
        "BentoML model store, so that `bentoml build` packs it into the Bento. Serve it with "
        "IMGEDIT_MODEL=bentoml:NAME.",
    )
    importer.add_argument("source", help="Hugging Face repo id (owner/name) or a local directory")
    importer.add_argument("--name", required=True, help="name in the model store")
    importer.add_argument("--revision", help="hub branch, tag or commit (default: main)")
    importer.add_argument("--quiet", action="store_true", help="no progress bar")
    exporter = commands.add_parser(
        "export-tiny",
        help="write a built-in tiny model as a diffusers pipeline directory",
        description="Write the built-in tiny model NAME (as in IMGEDIT_MODEL=tiny:NAME) to DIR as a diffusers "
        "pipeline, which IMGEDIT_MODEL=DIR serves: a local model, for LoRA files and the rest, with no weights "
        "to download.",
    )
    exporter.add_argument("name", help="a tiny model, e.g. qwen-image-edit-plus")
    exporter.add_argument("directory", type=Path, help="where to write it (created if missing)")
    arguments = parser.parse_args(argv)
    if arguments.command == "export-tiny":
        return _export_tiny(arguments.name, arguments.directory)
    return _import_model(arguments)


def _import_model(arguments: argparse.Namespace) -> int:
    from imgedit.weights.store import ModelImportError, import_model

    try:
        tag = import_model(arguments.source, arguments.name, arguments.revision, progress=not arguments.quiet)
    except ModelImportError as error:
        print(f"imgedit: {error}", file=sys.stderr)
        return 1
    print(f"imported {arguments.source} as {tag}; serve it with IMGEDIT_MODEL=bentoml:{tag}")
    return 0


def _export_tiny(name: str, directory: Path) -> int:
    from imgedit.model.tiny import export_tiny

    if directory.exists() and any(directory.iterdir()):
        print(f"imgedit: {directory} is not empty", file=sys.stderr)
        return 1
    try:
        pipeline_class = export_tiny(name, str(directory))
    except KeyError as error:
        print(f"imgedit: {error.args[0]}", file=sys.stderr)
        return 1
    print(f"wrote {pipeline_class} to {directory}; serve it with IMGEDIT_MODEL={directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
