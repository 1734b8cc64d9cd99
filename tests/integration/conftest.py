"""A real ``bentoml serve`` process serving the tiny model, shared by the integration tests."""

from __future__ import annotations

import pytest

from devtools.server import start_server, stop


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop(running.process)
