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
import logging, sys
from imgedit.logs import configure_logging
configure_logging(sys.argv[1])
import torchao
print(logging.getLogger("torchao").getEffectiveLevel(), logging.getLogger("torch.utils._pytree").getEffectiveLevel())
"""


@pytest.mark.parametrize(("level", "torchao_level"), [("info", logging.ERROR), ("debug", logging.WARNING)])
def test_torchao_import_warnings_are_heard_only_at_debug_level(level: str, torchao_level: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", TORCHAO_PROBE, level], capture_output=True, text=True, check=True, timeout=120
    )
    assert [int(value) for value in result.stdout.split()] == [torchao_level, torchao_level]
    if level == "info":
        assert "Failed to load" not in result.stderr
        assert "register_constant" not in result.stderr
