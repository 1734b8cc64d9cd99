"""The front of ``POST /v1/images/edits``: which path a request takes, and idempotent retries.

A plain request streams into the handler. One that asks for a background job
(``Prefer: respond-async``) or names an ``Idempotency-Key`` is read whole
first: a job keeps its request, and a key recognises its request by the
body's fingerprint. Under a key, the first answer (a 2xx) is kept and replayed
to every retry with the same body, marked ``Idempotent-Replayed: true``;
failures are not kept, so a retry runs again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imgedit import metrics
from imgedit.api.body import RawBody, read_body, read_raw
from imgedit.api.errors import ApiError
from imgedit.api.headers import IDEMPOTENCY_HEADER, REPLAYED_HEADER, idempotency_key, prefers_async
from imgedit.api.responses import SEEDS_HEADER, error_response
from imgedit.durable.idempotency import StoredAnswer
from imgedit.serving.background import Background
from imgedit.serving.routing import ModelRouter

#: Seconds past the request timeout a key stays held by a request that never finished (its worker died).
HOLD_GRACE_SECONDS = 60
#: The headers a kept answer repeats.
_KEPT_HEADERS = ("content-type", "location", "preference-applied", SEEDS_HEADER)


class Front:
    """Sends each edit request down its path.

    Args:
        router: the handler of each served model.
        background: runs background jobs; its storage also keeps the idempotency keys.
    """

    def __init__(self, router: ModelRouter, background: Background) -> None:
        self.router = router
        self.handler = router.default  # the request's model is known once its body is read
        self.background = background
        self.replays = background.storage.replays

    async def edit(self, connection: Request) -> Response:
        """Answer one ``POST /v1/images/edits``; never raises."""
        try:
            key = idempotency_key(connection.headers)
        except ApiError as error:
            return error_response(error)
        in_background = prefers_async(connection.headers)
        if key is None and not in_background:
            return await self.handler.answering(self._read_streaming(connection))
        return await self.handler.answering(self._read_whole(connection, key, in_background))

    async def _read_streaming(self, connection: Request) -> Response:
        body = await read_body(connection, self.handler.body_limits)
        return await self.router.pick(body).answer(body, connection)

    async def _read_whole(self, connection: Request, key: str | None, in_background: bool) -> Response:
        raw = await read_raw(connection, self.handler.body_limits)
        if key is None:
            return await self._answer(raw, connection, in_background)
        owner = self.background.storage.owner(connection.headers)
        fingerprint = raw.fingerprint("respond-async" if in_background else "respond-sync")
        hold = self.handler.settings.request_timeout + HOLD_GRACE_SECONDS
        found = await anyio.to_thread.run_sync(self.replays.begin, owner, key, fingerprint, time.time(), hold)
        if isinstance(found, StoredAnswer):
            metrics.idempotent_replays.inc()
            return Response(found.body, status_code=found.status, headers={**found.headers, REPLAYED_HEADER: "true"})
        if found == "mismatch":
            raise ApiError(
                422,
                f"This {IDEMPOTENCY_HEADER} was used with another request; use a new key for a new request.",
                param=IDEMPOTENCY_HEADER,
                code="idempotency_key_reused",
            )
        if found == "busy":
            raise ApiError(
                409,
                f"A request with this {IDEMPOTENCY_HEADER} is still running; retry once it has been answered.",
                param=IDEMPOTENCY_HEADER,
                code="idempotency_key_in_use",
                headers={"Retry-After": "1"},
            )
        try:
            response = await self._answer(raw, connection, in_background)
        except BaseException:
            await anyio.to_thread.run_sync(self.replays.release, owner, key)
            raise
        return await self._kept(response, owner, key)

    async def _answer(self, raw: RawBody, connection: Request, in_background: bool) -> Response:
        body = await raw.parse(self.handler.body_limits)
        if in_background:
            return await self.background.submit(raw, body, connection)
        return await self.router.pick(body).answer(body, connection)

    async def _kept(self, response: Response, owner: str, key: str) -> Response:
        """Keep a 2xx answer under the key; let the key go for anything else, and for a stream once it ends."""
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._released_after(response.body_iterator, owner, key)
            return response
        if not 200 <= response.status_code < 300:
            await anyio.to_thread.run_sync(self.replays.release, owner, key)
            return response
        headers = {name: value for name, value in response.headers.items() if name in _KEPT_HEADERS}
        answer = StoredAnswer(status=response.status_code, headers=headers, body=bytes(response.body))
        await anyio.to_thread.run_sync(self.replays.keep, owner, key, answer, time.time())
        return response

    async def _released_after(
        self, events: AsyncIterable[str | bytes | memoryview], owner: str, key: str
    ) -> AsyncIterator[str | bytes | memoryview]:
        """A streamed answer is not kept (a retry streams again); its key is held until the stream ends."""
        try:
            async for event in events:
                yield event
        finally:
            await anyio.to_thread.run_sync(self.replays.release, owner, key)
