"""The docs' tables that mirror code, made from it: ``python -m devtools.doc_tables`` checks them, ``--write`` updates.

Each table sits in its page between ``<!-- NAME -->`` and ``<!-- /NAME -->``;
between the markers is exactly what the code's own function makes. A test
fails when a page and the code part ways.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench.quantization import gpu_table
from devtools.test_hooks import VARIABLES
from imgedit.api.fields import markdown_table
from imgedit.config import ENV_PREFIX, Settings
from imgedit.metrics import metrics_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


#: The default as the configuration page shows it, where the value alone would not say what it means.
SHOWN_DEFAULTS = {
    "model_revision": "the default branch",
    "served_model_name": "last segment of the model",
    "family": "from the pipeline class",
    "max_images": "the family's default",
    "encoding_cache_mb": "1024 on a GPU, 256 on the CPU",
    "default_steps": "the family's default",
    "default_guidance_scale": "the family's default",
    "default_true_cfg_scale": "the family's default",
    "attention_backend": "PyTorch's choice",
    "quantize_components": "the denoiser",
    "memory_budget_gib": "what the device has free",
    "max_output_pixels": "4194304 (2048x2048)",
    "max_image_bytes": "52428800 (50 MiB)",
    "max_body_bytes": "104857600 (100 MiB)",
    "max_field_bytes": "1048576 (1 MiB)",
    "url_max_bytes": "52428800 (50 MiB)",
    "workers": "one per visible GPU (1 without); visible GPUs / ranks per edit with several ranks",
    "url_allowed_hosts": "any host",
    "data_dir": "`$XDG_DATA_HOME/imgedit` (`~/.local/share/imgedit`)",
    "image_store": "`images` in the data directory",
}


def settings_table(names: tuple[str, ...] | None = None) -> str:
    """The configuration page's table of every setting (or of ``names``), in Markdown: variable, default, meaning."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        meaning = " ".join((field.description or "").split())
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {SHOWN_DEFAULTS.get(name) or _shown(field.default)} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


#: The settings of the Jobs and links page.
JOB_SETTINGS = (
    "data_dir",
    "image_store",
    "s3_endpoint_url",
    "image_url_ttl",
    "public_url",
    "job_ttl",
    "idempotency_ttl",
    "webhook_url",
    "webhook_secret",
)


def _shown(default: object) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f"`{default}`"
    return f"{default:g}" if isinstance(default, float) else str(default)


def hooks_table() -> str:
    """The development page's table of the test hooks' variables."""
    rows = ["| Variable | What it does |", "|---|---|"]
    rows += [f"| `{name}` | {meaning} |" for name, meaning in VARIABLES.items()]
    return "\n".join(rows) + "\n"


#: (page, marker name, the function that makes the table).
TABLES: tuple[tuple[str, str, Callable[[], str]], ...] = (
    ("api.md", "fields", markdown_table),
    ("configuration.md", "settings", settings_table),
    ("jobs.md", "job-settings", lambda: settings_table(JOB_SETTINGS)),
    ("operations.md", "metrics", metrics_table),
    ("quantization.md", "gpu-table", gpu_table),
    ("development.md", "test-hooks", hooks_table),
)


def _section(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name} -->\n)(.*?)(<!-- /{name} -->)", re.DOTALL)


def stale() -> list[str]:
    """``page#name`` of every table that differs from what its code makes (or is missing)."""
    found = []
    for page, name, make in TABLES:
        match = _section(name).search((DOCS / page).read_text())
        if match is None or match.group(2) != _lines(make()):
            found.append(f"{page}#{name}")
    return found


def write() -> None:
    """Put the current tables into their pages."""
    for page, name, make in TABLES:
        path = DOCS / page
        path.write_text(_with_table(path.read_text(), name, _lines(make()), page))


def _lines(table: str) -> str:
    return table.rstrip("\n") + "\n"


def _with_table(text: str, name: str, table: str, page: str) -> str:
    pattern = _section(name)
    if pattern.search(text) is None:
        raise SystemExit(f"{page} has no <!-- {name} --> section")
    return pattern.sub(lambda match: match.group(1) + table + match.group(3), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the pages")
    if parser.parse_args().write:
        write()
        return 0
    differing = stale()
    for table in differing:
        print(f"{table} differs from the code; run python -m devtools.doc_tables --write", file=sys.stderr)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
