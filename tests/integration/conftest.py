"""The real ``bentoml serve`` processes the integration files share: one per set of settings more than one needs."""

from __future__ import annotations

import base64

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


#: The webhook secret of the keyed server.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"imgedit-test-webhook-secret-32b!").decode()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """The tiny model behind ``IMGEDIT_API_KEY`` (both of :data:`API_KEYS`), with what the job tests need
    (tests/integration/test_jobs.py): a webhook secret, local webhook receivers allowed, quick webhook
    retries, and a gate that holds a request whose prompt is ``gated`` at its second step."""
    directory = tmp_path_factory.mktemp("keys")
    running = start_server(
        directory,
        hooks=True,
        TEST_STEP_GATE=str(directory / "gate"),
        TEST_STEP_GATE_AT="1",
        TEST_WEBHOOK_DELAYS="0.1,0.1,0.1",
        IMGEDIT_API_KEY=",".join(API_KEYS),
        IMGEDIT_WEBHOOK_SECRET=WEBHOOK_SECRET,
        IMGEDIT_URL_ALLOW_PRIVATE="true",
    )
    running.gate = directory / "gate"  # type: ignore[attr-defined]
    yield running
    stop(running.process)
