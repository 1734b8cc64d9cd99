"""The ``x-request-id`` of every request, and its one access-log line.

The pure ASGI middleware below runs inside BentoML's own middlewares. For each
HTTP request it accepts the client's ``x-request-id`` (sanitised) or makes one,
keeps it as the current request (:data:`imgedit.logs.current_request`) so every
log line written while handling the request carries it, adds it to the response
headers, errors included, and finally writes one info line: method, path,
status, seconds and whatever the handler added (model, ``n``, size, steps).
BentoML's own access log is switched off because it cannot carry this id.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgedit.logs import RequestContext, current_request

HEADER = "x-request-id"
MAX_LENGTH = 128
#: Probe and scrape paths, logged at debug level only.
QUIET_PATHS = ("/livez", "/healthz", "/readyz", "/metrics")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/+=@-]")

#: A child of the ``imgedit`` logger (see :mod:`imgedit.logs`).
log = logging.getLogger("imgedit.access")


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


class AccessLogMiddleware:
    """Attach a request id to every HTTP request and response, and log one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_value = next((value for name, value in scope.get("headers", ()) if name == b"x-request-id"), None)
        context = RequestContext(sanitize(client_value.decode("latin-1") if client_value else None) or new_request_id())
        token = current_request.set(context)
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = context.id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            details = "".join(f" {key}={value}" for key, value in context.details.items())
            log.log(
                logging.DEBUG if path in QUIET_PATHS else logging.INFO,
                "%s %s status=%s seconds=%.3f%s",
                scope.get("method", "-"),
                path,
                status or "-",
                time.monotonic() - started,
                details,
            )
            current_request.reset(token)
