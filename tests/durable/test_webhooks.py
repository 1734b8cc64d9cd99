import base64
import json
import os

import anyio
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from devtools.webhooks import webhook_receiver
from imgedit.durable.jobs import Webhook
from imgedit.durable.webhooks import WebhookSender, check_secret
from imgedit.errors import RequestError
from imgedit.media.fetch import Fetcher, FetchPolicy

SECRET = "whsec_" + base64.b64encode(b"a fixed secret: test ids stay put").decode()
EVENT = {"object": "event", "id": "evt_1", "type": "image.edit.completed", "created_at": 1, "data": {"id": "edit_1"}}


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "not-prefixed" + SECRET, "whsec_" + base64.b64encode(b"short").decode(), "whsec_***", SECRET + "*"],
)
def test_bad_secrets_are_refused(secret):
    with pytest.raises(ValueError, match="whsec_"):
        check_secret(secret)


def test_a_good_secret_passes():
    check_secret(SECRET)
    check_secret(SECRET.rstrip("="))  # unpadded base64 is common


@pytest.fixture
def receiver():
    """A local endpoint that answers 503 to as many deliveries as a test asks, then 204."""
    with webhook_receiver(refused_status=503, accepted_status=204) as running:
        yield running


def test_an_event_is_delivered_signed_and_verifies(receiver):
    url, received = receiver.url, receiver.received
    sender = WebhookSender(SECRET, Fetcher(FetchPolicy(allow_private=True)))
    assert anyio.run(sender.send, Webhook(job_id="edit_1", url=url, event=EVENT, attempts=0))
    [(headers, body)] = received
    assert json.loads(body) == EVENT
    assert headers["webhook-id"] == "evt_1" and headers["content-type"] == "application/json"
    assert Verifier(SECRET).verify(body, headers) == EVENT
    with pytest.raises(Exception, match="signature"):
        Verifier("whsec_" + base64.b64encode(os.urandom(32)).decode()).verify(body, headers)


def test_a_refusing_receiver_or_a_dead_one_is_a_failed_attempt(receiver):
    url, received = receiver.url, receiver.received
    receiver.refusals = 1
    sender = WebhookSender(SECRET, Fetcher(FetchPolicy(allow_private=True)))
    webhook = Webhook(job_id="edit_1", url=url, event=EVENT, attempts=0)
    assert not anyio.run(sender.send, webhook)
    assert anyio.run(sender.send, webhook)
    assert received[0][0]["webhook-id"] == received[1][0]["webhook-id"]
    dead = Webhook(job_id="edit_1", url="http://127.0.0.1:9/x", event=EVENT, attempts=0)
    assert not anyio.run(sender.send, dead)


def test_private_targets_are_refused_unless_allowed(receiver):
    url, received = receiver.url, receiver.received
    guarded = Fetcher(FetchPolicy())
    with pytest.raises(RequestError) as refused:
        anyio.run(guarded.check_target, url, "webhook_url")
    assert refused.value.param == "webhook_url" and "loopback" in refused.value.message
    assert not anyio.run(WebhookSender(SECRET, guarded).send, Webhook(job_id="e", url=url, event=EVENT, attempts=0))
    assert received == []  # refused before connecting
    for bad in ("ftp://example.com/x", "not a url", "http://169.254.169.254/latest"):
        with pytest.raises(RequestError):
            anyio.run(Fetcher(FetchPolicy(allow_private=True)).check_target, bad, "webhook_url")
    anyio.run(Fetcher(FetchPolicy(allow_private=True)).check_target, url, "webhook_url")
