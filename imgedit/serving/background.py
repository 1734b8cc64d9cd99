"""Background jobs: an edit sent with ``Prefer: respond-async`` is answered at once (202 and the job) and runs on.

The worker that receives it checks and prepares it as it would any edit (so a
bad request is still a 400, and a full queue still a 429), stores the request
in the shared job table and follows the run to its end, writing the result
there. Any worker answers ``GET``, ``POST .../cancel`` and ``DELETE`` for any job.

Each worker also looks after the jobs every second, in a thread of its own:
it renews its lease on the jobs it runs and writes their progress, stops those
whose cancel was asked for elsewhere, claims the queued jobs no live worker
holds (left by a worker that died or a server that restarted), sends the
webhooks due, and deletes what has expired.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imgedit import metrics
from imgedit.api.body import RawBody
from imgedit.api.errors import ApiError
from imgedit.api.multipart import Form
from imgedit.api.parse import parse_edit_request
from imgedit.api.responses import ImageItem, b64
from imgedit.durable.images import MEDIA_TYPES, DirectoryStore, LinkRefused, keep_until
from imgedit.durable.jobs import ENDED, JobRow, Webhook
from imgedit.errors import RequestError, invalid
from imgedit.logs import add_to_access_line, get_logger
from imgedit.scheduling.jobs import Job
from imgedit.serving.answers import Prepared, encode, images_body, link_items, store_images
from imgedit.serving.handler import EditHandler
from imgedit.serving.routing import ModelRouter
from imgedit.serving.storage import Storage

log = get_logger(__name__)

#: Seconds between two looks after the jobs.
LOOK_SECONDS = 1.0
#: Seconds between two sweeps of what has expired.
SWEEP_SECONDS = 60.0
#: Seconds a cancel waits for the run to stop before it answers (the job then says where it is).
CANCEL_WAIT_SECONDS = 10.0
#: Why an engine job was stopped by a cancel of its background job.
CANCELLED = "cancelled"
_LINK_ERRORS = {403: "invalid_signature", 404: "not_found", 410: "link_expired"}


class Background:
    """The background jobs of one worker.

    Args:
        router: the handler of each served model, which prepares and runs its edits.
        storage: the job table, the image store and the webhooks.
    """

    def __init__(self, router: ModelRouter, storage: Storage) -> None:
        self.router = router
        self.storage = storage
        self.jobs = storage.jobs
        #: The engine jobs this worker runs, by job id, and the last progress written for each.
        self._running: dict[str, Job] = {}
        self._written: dict[str, int] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the routes -------------------------------------------------------------------------------

    async def submit(self, raw: RawBody, body: Form | dict[str, Any], connection: Request) -> Response:
        """Check, prepare and admit the edit in ``body``, store it as a job, and answer 202 with the job."""
        handler = self.router.pick(body)
        add_to_access_line(model=handler.settings.served_name)
        request = parse_edit_request(body, handler.limits)
        if request.stream:
            raise invalid("stream", "A background job cannot stream: leave out 'stream' or 'Prefer: respond-async'.")
        if request.webhook_url is not None:
            if self.storage.webhooks is None:
                raise invalid(
                    "webhook_url", "This server sends no webhooks: it has no IMGEDIT_WEBHOOK_SECRET to sign them."
                )
            await handler.fetcher.check_target(request.webhook_url, "webhook_url")
        prepared = await handler.prepare(request)
        job = handler.submit(prepared)
        try:
            row = await anyio.to_thread.run_sync(
                lambda: self.jobs.create(
                    owner=self.storage.owner(connection.headers),
                    body=raw.data,
                    content_type=raw.content_type,
                    webhook_url=request.webhook_url or self.storage.webhook_url,
                    now=time.time(),
                    model=handler.settings.served_name,
                )
            )
        except BaseException:
            job.cancel("abandoned")
            raise
        add_to_access_line(job=row.id)
        self._keep(asyncio.ensure_future(self._follow(row.id, handler, prepared, job)))
        headers = {"Location": f"/v1/images/edits/{row.id}", "Preference-Applied": "respond-async"}
        return JSONResponse(self._body(row), status_code=202, headers=headers)

    async def get_job(self, job_id: str, request: Request) -> dict[str, Any]:
        """``GET /v1/images/edits/{id}``: the job, with its images once completed."""
        row = await anyio.to_thread.run_sync(self.jobs.get, job_id, self.storage.owner(request.headers))
        if row is None:
            raise _no_such_job(job_id)
        return await self._with_images(row, str(request.base_url))

    async def cancel_job(self, job_id: str, request: Request) -> dict[str, Any]:
        """``POST /v1/images/edits/{id}/cancel``: stop the job (queued or running) and answer it."""
        owner = self.storage.owner(request.headers)
        row = await anyio.to_thread.run_sync(self.jobs.request_cancel, job_id, owner, time.time())
        if row is None:
            raise _no_such_job(job_id)
        local = self._running.get(job_id)
        if local is not None:
            local.cancel(CANCELLED)
        waited_until = time.monotonic() + CANCEL_WAIT_SECONDS
        while row is not None and row.status not in ENDED and time.monotonic() < waited_until:
            await asyncio.sleep(0.1)
            row = await anyio.to_thread.run_sync(self.jobs.get, job_id, owner)
        if row is None:  # deleted meanwhile
            raise _no_such_job(job_id)
        return await self._with_images(row, str(request.base_url))

    async def delete_job(self, job_id: str, request: Request) -> dict[str, Any]:
        """``DELETE /v1/images/edits/{id}``: stop the job if it runs, and delete it and its images."""
        names = await anyio.to_thread.run_sync(self.jobs.delete, job_id, self.storage.owner(request.headers))
        if names is None:
            raise _no_such_job(job_id)
        local = self._running.get(job_id)
        if local is not None:
            local.cancel(CANCELLED)
        await anyio.to_thread.run_sync(self.storage.images.delete, names)
        return {"id": job_id, "object": "image.edit.deleted", "deleted": True}

    def image_file(self, name: str, expires: str | None, signature: str | None) -> tuple[Any, str]:
        """``GET /v1/images/files/{name}``: the stored image a signed link points at, and its media type."""
        store = self.storage.images
        if not isinstance(store, DirectoryStore):
            raise ApiError(404, "Images are served by the S3 store's own links here.", code="not_found")
        try:
            path = store.open(name, expires, signature)
        except LinkRefused as refused:
            raise ApiError(refused.status, refused.message, code=_LINK_ERRORS[refused.status]) from None
        return path, MEDIA_TYPES[name.rsplit(".", 1)[1]]

    # -- one job ----------------------------------------------------------------------------------

    async def _follow(self, job_id: str, handler: EditHandler, prepared: Prepared, job: Job) -> None:
        """Wait for the run of ``job`` and write how it ended."""
        self._running[job_id] = job
        end = self.jobs.end
        try:
            outputs = await handler.run(job, time.monotonic() + handler.settings.request_timeout)
            encoded = await encode(prepared, outputs)
            names: list[str] = []
            if prepared.request.response_format == "url":
                until = int(time.time()) + self.jobs.ttl + 60  # a little past the job itself
                names = await store_images(self.storage, encoded, prepared.request.output_format, until)
            items = [] if names else [ImageItem(b64_json=b64(image)) for image in encoded]
            result = images_body(prepared, items, len(encoded)).model_dump(mode="json")
            kept = await anyio.to_thread.run_sync(
                lambda: end(job_id, "completed", time.time(), result=result, images=names)
            )
            if not kept:  # deleted while it ran
                await anyio.to_thread.run_sync(self.storage.images.delete, names)
        except (ApiError, RequestError) as error:
            await self._ended_early(job_id, job, error)
        except Exception:
            log.exception("background edit %s failed", job_id)
            failure = {"code": "internal_error", "message": "The server failed to run this edit."}
            await anyio.to_thread.run_sync(lambda: end(job_id, "failed", time.time(), error=failure))
        finally:
            self._running.pop(job_id, None)
            self._written.pop(job_id, None)

    async def _ended_early(self, job_id: str, job: Job, error: ApiError | RequestError) -> None:
        if job.cancel_reason == CANCELLED:
            await anyio.to_thread.run_sync(lambda: self.jobs.end(job_id, "cancelled", time.time()))
        elif job.cancel_reason == "shutdown":  # the next worker to look runs it again
            await anyio.to_thread.run_sync(self.jobs.requeue, job_id)
        else:
            detail = {"code": error.code or "edit_failed", "message": error.message}
            await anyio.to_thread.run_sync(lambda: self.jobs.end(job_id, "failed", time.time(), error=detail))

    async def _rerun(self, row: JobRow) -> None:
        """Run a job another worker left queued: from its stored request, as if it had just arrived."""
        assert row.body is not None and row.content_type is not None
        try:
            body = await RawBody(row.content_type, row.body).parse(self.router.default.body_limits)
            handler = self.router.pick(body)
            prepared = await handler.prepare(parse_edit_request(body, handler.limits))
            job = handler.submit(prepared)
        except (ApiError, RequestError) as error:
            if isinstance(error, ApiError) and error.status in (429, 503):  # busy, or shutting down: later
                await anyio.to_thread.run_sync(self.jobs.requeue, row.id)
                return
            detail = {"code": error.code or "edit_failed", "message": error.message}
            await anyio.to_thread.run_sync(lambda: self.jobs.end(row.id, "failed", time.time(), error=detail))
            return
        log.info("running background edit %s, left queued by another worker", row.id)
        await self._follow(row.id, handler, prepared, job)

    # -- the answer -------------------------------------------------------------------------------

    @staticmethod
    def _body(row: JobRow, data: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": row.id,
            "object": "image.edit",
            "status": row.status,
            "model": row.model,
            "created_at": row.created_at,
            "completed_at": row.completed_at,
            "expires_at": row.expires_at,
            "progress": row.progress,
            "error": row.error,
        }
        if row.status == "completed" and row.result is not None:
            body |= row.result
            if data is not None:
                body["data"] = data
        return body

    async def _with_images(self, row: JobRow, request_base: str) -> dict[str, Any]:
        if row.status != "completed" or not row.images:
            return self._body(row)
        until = min(keep_until(name) or 0 for name in row.images)
        items = await link_items(self.storage, row.images, request_base, until)
        return self._body(row, [item.model_dump() for item in items])

    # -- looking after the jobs -------------------------------------------------------------------

    def start(self) -> None:
        """Look after the jobs in a thread of this worker's own, with its own event loop."""
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._look_after(),), name="imgedit-jobs", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop looking after the jobs, and give back to the queue those still running here: the next worker to
        look (another one, or this server once restarted) runs them again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for job_id in list(self._running):
            self.jobs.requeue(job_id)

    async def _look_after(self) -> None:
        last_sweep = 0.0
        while not self._stop.is_set():
            now = time.time()
            try:
                self._look(now)
                if now - last_sweep >= SWEEP_SECONDS:
                    last_sweep = now
                    self._sweep(now)
            except Exception:  # a busy or broken database must not end the loop
                log.exception("looking after the background jobs failed")
            await asyncio.sleep(LOOK_SECONDS)
        for task in list(self._tasks):
            task.cancel()

    def _look(self, now: float) -> None:
        for job_id, job in list(self._running.items()):
            if job.started and self._written.get(job_id) != job.percent:
                if job_id not in self._written:
                    self.jobs.start(job_id)
                self._written[job_id] = job.percent
                self.jobs.progress(job_id, job.percent)
        for job_id in self.jobs.renew(list(self._running), now):
            if job_id in self._running:
                self._running[job_id].cancel(CANCELLED)
        if not self.router.default.engine.draining:
            for row in self.jobs.reclaim(now):
                self._keep(asyncio.ensure_future(self._rerun(row)))
        if self.storage.webhooks is not None:
            for webhook in self.jobs.due_webhooks(now):
                self._keep(asyncio.ensure_future(self._deliver(webhook)))

    def _sweep(self, now: float) -> None:
        self.storage.images.delete(self.jobs.sweep(now))
        self.storage.images.sweep(int(now))
        self.storage.replays.sweep(now)

    async def _deliver(self, webhook: Webhook) -> None:
        assert self.storage.webhooks is not None
        delivered = await self.storage.webhooks.send(webhook)
        metrics.webhook_attempts.labels("delivered" if delivered else "failed").inc()
        again = await anyio.to_thread.run_sync(lambda: self.jobs.webhook_tried(webhook, delivered, time.time()))
        if not delivered:
            log.warning(
                "webhook %s for %s was not accepted (attempt %d)%s",
                webhook.event["type"],
                webhook.job_id,
                webhook.attempts + 1,
                "; it will be retried" if again else "; giving up",
            )

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _no_such_job(job_id: str) -> ApiError:
    shown = job_id if len(job_id) <= 64 else job_id[:61] + "..."
    return ApiError(404, f"No job {shown!r} exists.", code="not_found")
