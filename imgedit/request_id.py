"""``x-request-id``: accept the client's, or make one, and put it everywhere.

The pure ASGI middleware below runs inside BentoML's own middlewares. It stores
the id in a context variable, so every log line written while handling the
request (including in worker threads that copy the context) can carry it, and
adds it to the response headers, errors included.
"""

from __future__ import annotations

import contextvars
import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
MAX_LENGTH = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/+=@-]")

current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("imgedit_request_id", default="-")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def sanitize(value: str | None) -> str | None:
    """Keep a client id only if it is usable in headers and logs.

    Characters outside a conservative set are dropped and the result is cut to
    :data:`MAX_LENGTH`; an id with nothing left is replaced by the caller.
    """
    if not value:
        return None
    cleaned = _UNSAFE.sub("", value)[:MAX_LENGTH]
    return cleaned or None


class RequestIdMiddleware:
    """Attach a request id to every HTTP request and response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_value = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                client_value = value.decode("latin-1")
                break
        request_id = sanitize(client_value) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
