"""Optional keys: with ``IMGEDIT_API_KEY`` set, ``/v1/*`` needs ``Authorization: Bearer <key>``;
the LoRA endpoints (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) always need
an ``IMGEDIT_ADMIN_KEY`` instead, which no API key replaces.

This is how the ``openai`` SDK sends its ``api_key``. Health probes, metrics
and the BentoML pages stay open, and so do signed image links
(``/v1/images/files/...``): their signature is the credential. Keys are compared in constant time, against
every configured key, and never logged.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from imgedit.api.errors import ApiError
from imgedit.api.responses import error_response

PROTECTED_PREFIX = "/v1/"
#: Signed image links, which need no key (a browser or another service opens them).
OPEN_PREFIX = "/v1/images/files/"
#: Paths that only an admin key opens.
ADMIN_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


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
    """Refuses ``/v1/*`` requests without a valid bearer key (401, OpenAI's error shape).

    Args:
        keys: the API keys (none: ``/v1/*`` is open).
        admin_keys: the admin keys, the only ones that open :data:`ADMIN_PATHS`.
    """

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], admin_keys: tuple[bytes, ...] = ()) -> None:
        self.app = app
        self.keys = keys
        self.admin_keys = admin_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        keys = self.admin_keys if path.rstrip("/") in ADMIN_PATHS else self.keys
        if scope["type"] != "http" or not keys or not path.startswith(PROTECTED_PREFIX) or path.startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
        scheme, _, token = authorization.partition(b" ")
        what = "admin key" if keys is self.admin_keys else "API key"
        if scheme.lower() != b"bearer" or not token.strip():
            error = _unauthorized(f"Missing {what}: send it as 'Authorization: Bearer <key>'.")
        elif not key_is_valid(token.strip(), keys):
            error = _unauthorized(f"Incorrect {what} provided.")
        else:
            await self.app(scope, receive, send)
            return
        await error_response(error)(scope, receive, send)
