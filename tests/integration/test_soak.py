"""Two minutes of the soak benchmark: every request accounted for, nothing lost but a killed worker's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devtools.server import ROOT

pytestmark = pytest.mark.integration


def test_a_two_minute_soak_loses_nothing(tmp_path):
    summary = tmp_path / "soak.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "2", "--kill-every", "40", "--json", str(summary)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(summary.read_text())
    counts = result["counts"]
    assert result["lost"] == []
    assert result["status"] == 0, f"after SIGTERM: status {result['status']} in {result['exit_seconds']} s"
    assert result["kills"] >= 2
    for client in ("sync", "sync + lora", "stream", "bad input", "lora load", "lora edit", "lora unload", "job"):
        assert counts.get(f"{client}/ok", 0) > 0, client
    assert counts.get("bad input/refused", 0) > 0 and counts.get("hang-up/hung up", 0) > 0
    assert not any(key.endswith("/lost") for key in counts)
