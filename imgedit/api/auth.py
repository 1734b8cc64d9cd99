"""Optional API keys: with ``IMGEDIT_API_KEY`` set, ``/v1/*`` needs ``Authorization: Bearer <key>``.

This is how the ``openai`` SDK sends its ``api_key``. Health probes, metrics
and the BentoML pages stay open. Keys are compared in constant time, against
every configured key, and never logged.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from imgedit.api.responses import error_response
from imgedit.errors import ApiError

PROTECTED_PREFIX = "/v1/"


def parse_keys(value: str | None) -> tuple[bytes, ...]:
    """The keys of ``IMGEDIT_API_KEY`` (comma-separated; blanks ignored)."""
    if not value:
        return ()
    return tuple(key.strip().encode() for key in value.split(",") if key.strip())


def key_is_valid(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """Whether ``presented`` is one of ``keys``, taking the same time whichever matches."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(presented, key)
    return valid


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class ApiKeyMiddleware:
    """Refuses ``/v1/*`` requests without a valid bearer key (401, OpenAI's error shape)."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope.get("path", "").startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            error = _unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
        elif not key_is_valid(token.strip(), self.keys):
            error = _unauthorized("Incorrect API key provided.")
        else:
            await self.app(scope, receive, send)
            return
        await error_response(error)(scope, receive, send)
