"""The real ``bentoml serve`` processes the integration files share: one per set of settings more than one needs."""

from __future__ import annotations

import pytest

from devtools.server import start_server, stop

#: The keys of the shared server that wants one (tests/integration/test_api_keys.py, the playground's key prompt).
API_KEYS = ("sk-first-4b1d", "sk-second-9c2e")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The tiny model with every default setting."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop(running.process)


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """The tiny model behind ``IMGEDIT_API_KEY`` (both of :data:`API_KEYS`)."""
    running = start_server(tmp_path_factory.mktemp("keys"), IMGEDIT_API_KEY=",".join(API_KEYS))
    yield running
    stop(running.process)
