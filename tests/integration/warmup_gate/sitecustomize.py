"""Test-only start-up hook: holds the server's warm-up until a gate file exists.

Put this folder on PYTHONPATH and set TEST_WARMUP_GATE to a path. The warm-up
writes ``<gate>.reached`` when it arrives, then waits for ``<gate>`` itself.
"""

import os
import time

_gate = os.environ.get("TEST_WARMUP_GATE")
if _gate:
    from imgedit.engine import Engine

    _run_now = Engine.run_now

    def _gated_run_now(self, calls):
        open(_gate + ".reached", "w").close()
        while not os.path.exists(_gate):
            time.sleep(0.05)
        return _run_now(self, calls)

    Engine.run_now = _gated_run_now
