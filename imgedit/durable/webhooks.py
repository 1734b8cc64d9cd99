"""Webhooks when a job ends: an event in OpenAI's shape, signed as the Standard Webhooks spec says.

The event (``object: "event"``, ``id``, ``type``, ``created_at``, ``data.id``)
is made once, when the job ends, and stored with it, so every attempt sends
the same ``webhook-id`` and body; the receiver verifies ``webhook-signature``
with its ``whsec_`` secret (the ``standardwebhooks`` library does it in one call).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook as Signer

from imgedit.durable.jobs import Webhook
from imgedit.media.fetch import Fetcher

#: Seconds one attempt may take, the connection included.
ATTEMPT_TIMEOUT_SECONDS = 10.0


def check_secret(secret: str) -> None:
    """Refuse a secret the Standard Webhooks spec would not take.

    Raises:
        ValueError: it lacks the ``whsec_`` prefix or is not base64 of at least 24 bytes.
    """
    encoded = secret.removeprefix("whsec_").rstrip("=")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise ValueError("expected a Standard Webhooks secret: whsec_ then base64 of 24 to 64 random bytes")


class WebhookSender:
    """Sends job events.

    Args:
        secret: the ``whsec_`` secret (``IMGEDIT_WEBHOOK_SECRET``).
        fetcher: posts under the same address checks as URL inputs.
    """

    def __init__(self, secret: str, fetcher: Fetcher) -> None:
        self.signer = Signer(secret)
        self.fetcher = fetcher

    def headers(self, webhook: Webhook, body: bytes, now: datetime) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt (its timestamp is the attempt's)."""
        event_id = str(webhook.event["id"])
        return {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(event_id, now, body.decode()),
        }

    async def send(self, webhook: Webhook) -> bool:
        """One attempt; whether the receiver answered 2xx."""
        body = json.dumps(webhook.event, separators=(",", ":")).encode()
        headers = self.headers(webhook, body, datetime.now(UTC))
        try:
            status = await self.fetcher.post(webhook.url, body, headers, ATTEMPT_TIMEOUT_SECONDS)
        except OSError:
            return False
        return 200 <= status < 300
