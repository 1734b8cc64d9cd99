"""imgedit.logs: library chatter is silenced without importing the libraries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from imgedit.logs import configure_logging
configure_logging("info")
print("diffusers" in sys.modules, "transformers" in sys.modules)
import diffusers.utils.logging, transformers.utils.logging
print(diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity())
"""


def probe(**env: str) -> list[str]:
    clean = {key: value for key, value in os.environ.items() if not key.endswith("_VERBOSITY")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=120
    )
    return result.stdout.split()


def test_configuring_imports_neither_library_yet_both_log_errors_only() -> None:
    assert probe() == ["False", "False", "40", "40"]


def test_an_operators_verbosity_wins() -> None:
    assert probe(DIFFUSERS_VERBOSITY="info", TRANSFORMERS_VERBOSITY="warning") == ["False", "False", "20", "30"]


def test_libraries_loaded_before_configuring_are_quieted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers.utils.logging

    from imgedit.logs import configure_logging

    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    diffusers.utils.logging.set_verbosity_info()
    configure_logging("info")
    assert diffusers.utils.logging.get_verbosity() == 40


TORCHAO_PROBE = """
import logging
from imgedit.logs import configure_logging
configure_logging("info")
import torchao
quiet = [logging.getLogger(name).getEffectiveLevel() for name in ("torchao", "torch.utils._pytree")]
configure_logging("debug")
heard = [logging.getLogger(name).getEffectiveLevel() for name in ("torchao", "torch.utils._pytree")]
print(*quiet, *heard)
"""


def test_torchao_import_warnings_are_heard_only_at_debug_level() -> None:
    result = subprocess.run(
        [sys.executable, "-c", TORCHAO_PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    error, warning = logging.ERROR, logging.WARNING
    assert [int(value) for value in result.stdout.split()] == [error, error, warning, warning]
    assert "Failed to load" not in result.stderr
    assert "register_constant" not in result.stderr


FORM_PARSER_PROBE = """
import logging
from imgedit.logs import configure_logging
parser_log = logging.getLogger("python_multipart.multipart")
configure_logging("info")
quiet = parser_log.getEffectiveLevel()
configure_logging("debug")
print(quiet, parser_log.getEffectiveLevel())
"""


def test_a_malformed_form_leaves_no_byte_of_it_in_the_log() -> None:
    # python-multipart warns of a malformed form with a byte of it ("Expected boundary character 97, got 120").
    result = subprocess.run(
        [sys.executable, "-c", FORM_PARSER_PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert [int(value) for value in result.stdout.split()] == [logging.ERROR, logging.WARNING]  # heard at debug
