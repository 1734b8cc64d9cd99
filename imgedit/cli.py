"""The ``imgedit`` command line: ``imgedit import-model SRC --name NAME``."""

from __future__ import annotations

import argparse
import sys

from imgedit.model.store import ModelImportError, import_model


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
    arguments = parser.parse_args(argv)
    try:
        tag = import_model(arguments.source, arguments.name, arguments.revision, progress=not arguments.quiet)
    except ModelImportError as error:
        print(f"imgedit: {error}", file=sys.stderr)
        return 1
    print(f"imported {arguments.source} as {tag}; serve it with IMGEDIT_MODEL=bentoml:{tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
