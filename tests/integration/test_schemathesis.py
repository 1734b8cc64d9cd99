"""Schemathesis, driven by the service's own OpenAPI document, finds no server error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).with_name("st")


def test_no_generated_request_gets_a_5xx(server):
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "150",
            "--request-timeout",
            "60",
            "--seed",
            "20261125",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout  # cases were really generated and sent
    assert "Traceback" not in server.log()
