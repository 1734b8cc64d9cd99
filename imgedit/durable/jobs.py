"""Background edits as rows of the shared database: their state, their lease, their result, their webhook.

A job belongs to the worker that runs it (its ``runner``) for as long as that
worker renews its lease. A job whose lease ran out lost its worker: a queued
one is claimed by another worker (or by the next start) and runs there; one
that was running ends ``failed``, since its run stopped at an unknown point.
Any worker reads any job; a cancel from another worker is a flag the runner
acts on at its next look.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from imgedit import metrics
from imgedit.durable.database import Database

Status = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
ENDED: tuple[Status, ...] = ("completed", "failed", "cancelled")
#: Seconds a runner's claim lasts unless renewed; renewed every third of it.
LEASE_SECONDS = 15.0
#: A job id: ``edit_`` and 32 hex digits. Anything else is no job, answered without a look at the database.
JOB_ID = re.compile(r"edit_[0-9a-f]{32}")
#: Seconds between webhook attempts, after the first; one more attempt than there are delays.
WEBHOOK_DELAYS = (5.0, 30.0, 120.0, 600.0, 3600.0)
#: Seconds a worker holds a webhook it is sending before another may try it.
WEBHOOK_CLAIM_SECONDS = 60.0
WORKER_LOST = {
    "code": "worker_lost",
    "message": "The worker running this edit stopped before it finished; submit it again.",
}


def new_job_id() -> str:
    return f"edit_{secrets.token_hex(16)}"


def runner_name() -> str:
    """This process's name as a runner: host, process id and a random part (process ids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, kw_only=True)
class JobRow:
    """A job as the database holds it.

    Attributes:
        result: the answer's body when completed (without ``data`` for images kept in the store).
        images: the stored images' names, for ``response_format=url``.
        error: ``{"code", "message"}`` when failed.
        body: the request as received, kept until the job ends (so another worker can run it).
    """

    id: str
    owner: str
    status: Status
    created_at: int
    completed_at: int | None
    expires_at: int | None
    progress: int
    model: str
    result: dict[str, Any] | None
    images: list[str]
    error: dict[str, Any] | None
    webhook_url: str | None
    body: bytes | None = None
    content_type: str | None = None

    @classmethod
    def of(cls, row: sqlite3.Row, with_body: bool = False) -> JobRow:
        return cls(
            id=row["id"],
            owner=row["owner"],
            status=row["status"],
            created_at=row["created_at"],
            completed_at=row["completed_at"],
            expires_at=row["expires_at"],
            progress=row["progress"],
            model=row["model"],
            result=json.loads(row["result"]) if row["result"] else None,
            images=json.loads(row["images"]) if row["images"] else [],
            error=json.loads(row["error"]) if row["error"] else None,
            webhook_url=row["webhook_url"],
            body=row["body"] if with_body else None,
            content_type=row["content_type"] if with_body else None,
        )


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """A webhook due: the job it is about, where it goes, its event (the same at every attempt)."""

    job_id: str
    url: str
    event: dict[str, Any]
    attempts: int


class JobTable:
    """The jobs of one server, seen from one worker.

    Args:
        database: the shared database.
        runner: this worker's name (:func:`runner_name`).
        ttl: seconds a job is kept after it ends (``IMGEDIT_JOB_TTL``).
        model: the served model (the default one); a worker runs only the jobs made for the models it serves
            (:attr:`models`), since servers of other models may share the data directory.
    """

    def __init__(self, database: Database, runner: str, ttl: int, model: str) -> None:
        self.database = database
        self.runner = runner
        self.ttl = ttl
        self.model = model
        #: Every model this worker serves (``IMGEDIT_MODELS``), the default first.
        self.models: tuple[str, ...] = (model,)

    def create(
        self,
        *,
        owner: str,
        body: bytes,
        content_type: str,
        webhook_url: str | None,
        now: float,
        model: str | None = None,
    ) -> JobRow:
        """A new queued job for ``model`` (by default the default one), run by this worker."""
        job_id = new_job_id()
        with self.database.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, status, created_at, model, body, content_type, runner, lease_until,"
                " webhook_url) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    owner,
                    int(now),
                    model or self.model,
                    body,
                    content_type,
                    self.runner,
                    now + LEASE_SECONDS,
                    webhook_url,
                ),
            )
        found = self.get(job_id, owner)
        assert found is not None
        return found

    def get(self, job_id: str, owner: str) -> JobRow | None:
        """The job, if it exists and belongs to ``owner``."""
        if not JOB_ID.fullmatch(job_id):
            return None
        rows = self.database.rows("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner))
        return JobRow.of(rows[0]) if rows else None

    def start(self, job_id: str) -> None:
        """This worker's queued job began to run."""
        with self.database.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'in_progress' WHERE id = ? AND runner = ? AND status = 'queued'",
                (job_id, self.runner),
            )

    def progress(self, job_id: str, percent: int) -> None:
        with self.database.transaction() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ? AND runner = ?", (percent, job_id, self.runner))

    def end(
        self,
        job_id: str,
        status: Status,
        now: float,
        *,
        result: dict[str, Any] | None = None,
        images: list[str] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """This worker's job ended; False when it is no longer this worker's (deleted, or given up on)."""
        with self.database.transaction() as db:
            return _end(db, job_id, status, now, self.ttl, self.runner, result=result, images=images, error=error)

    def requeue(self, job_id: str) -> None:
        """Give this worker's job back to the queue (it is shutting down): the next worker to look runs it."""
        with self.database.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', runner = NULL, lease_until = 0, progress = 0"
                " WHERE id = ? AND runner = ? AND status IN ('queued', 'in_progress')",
                (job_id, self.runner),
            )

    def request_cancel(self, job_id: str, owner: str, now: float) -> JobRow | None:
        """Ask for the job to stop; one that no live worker holds is cancelled at once. None: no such job."""
        if self.get(job_id, owner) is None:
            return None
        with self.database.transaction() as db:
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status IN ('queued', 'in_progress')", (job_id,)
            )
            row = db.execute("SELECT status, lease_until FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["status"] == "queued" and row["lease_until"] < now:
                _end(db, job_id, "cancelled", now, self.ttl, None)
        return self.get(job_id, owner)

    def delete(self, job_id: str, owner: str) -> list[str] | None:
        """Delete the job; returns its stored images' names, for the caller to delete, or None: no such job.

        A run in progress is asked to stop; it finds its row gone when it ends.
        """
        if not JOB_ID.fullmatch(job_id):
            return None
        with self.database.transaction() as db:
            row = db.execute("SELECT images FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return json.loads(row["images"]) if row["images"] else []

    def renew(self, job_ids: list[str], now: float) -> list[str]:
        """Renew this worker's lease on its jobs; returns those whose cancel was asked for, or that are gone."""
        stop: list[str] = []
        with self.database.transaction() as db:
            for job_id in job_ids:
                db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND runner = ?",
                    (now + LEASE_SECONDS, job_id, self.runner),
                )
                row = db.execute(
                    "SELECT cancel_requested FROM jobs WHERE id = ? AND runner = ?", (job_id, self.runner)
                ).fetchone()
                if row is None or row["cancel_requested"]:
                    stop.append(job_id)
        return stop

    def reclaim(self, now: float) -> list[JobRow]:
        """Claim the queued jobs no live worker holds, to run here; end the running ones whose worker died."""
        with self.database.transaction() as db:
            lost = db.execute(
                "SELECT id, status, cancel_requested FROM jobs"
                " WHERE status IN ('queued', 'in_progress') AND lease_until < ?"
                f" AND model IN ({', '.join('?' * len(self.models))})",
                (now, *self.models),
            ).fetchall()
            claimed: list[str] = []
            for row in lost:
                if row["cancel_requested"]:
                    _end(db, row["id"], "cancelled", now, self.ttl, None)
                elif row["status"] == "in_progress":
                    _end(db, row["id"], "failed", now, self.ttl, None, error=WORKER_LOST)
                else:
                    db.execute(
                        "UPDATE jobs SET runner = ?, lease_until = ? WHERE id = ?",
                        (self.runner, now + LEASE_SECONDS, row["id"]),
                    )
                    claimed.append(row["id"])
            rows = [db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone() for job_id in claimed]
        return [JobRow.of(row, with_body=True) for row in rows]

    def sweep(self, now: float) -> list[str]:
        """Delete the jobs kept past their time; returns their stored images' names."""
        with self.database.transaction() as db:
            rows = db.execute("SELECT images FROM jobs WHERE expires_at < ?", (int(now),)).fetchall()
            db.execute("DELETE FROM jobs WHERE expires_at < ?", (int(now),))
        return [name for row in rows if row["images"] for name in json.loads(row["images"])]

    def due_webhooks(self, now: float) -> list[Webhook]:
        """Claim the webhooks due now, for this worker to send."""
        with self.database.transaction() as db:
            rows = db.execute(
                "SELECT id, webhook_url, webhook_event, webhook_attempts FROM jobs WHERE webhook_next_at <= ?", (now,)
            ).fetchall()
            for row in rows:
                db.execute("UPDATE jobs SET webhook_next_at = ? WHERE id = ?", (now + WEBHOOK_CLAIM_SECONDS, row["id"]))
        return [
            Webhook(
                job_id=row["id"],
                url=row["webhook_url"],
                event=json.loads(row["webhook_event"]),
                attempts=row["webhook_attempts"],
            )
            for row in rows
        ]

    def webhook_tried(self, webhook: Webhook, delivered: bool, now: float) -> bool:
        """Record an attempt; returns whether another will follow."""
        attempts = webhook.attempts + 1
        again = not delivered and attempts <= len(WEBHOOK_DELAYS)
        next_at = now + WEBHOOK_DELAYS[attempts - 1] if again else None
        with self.database.transaction() as db:
            db.execute(
                "UPDATE jobs SET webhook_attempts = ?, webhook_next_at = ? WHERE id = ?",
                (attempts, next_at, webhook.job_id),
            )
        return again


def _end(
    db: sqlite3.Connection,
    job_id: str,
    status: Status,
    now: float,
    ttl: int,
    runner: str | None,
    *,
    result: dict[str, Any] | None = None,
    images: list[str] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """End a job that has not ended (``runner``'s, unless None); its webhook, if it has one, is due now."""
    row = db.execute("SELECT webhook_url, runner FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or (runner is not None and row["runner"] != runner):
        return False
    event = None
    if row["webhook_url"]:
        event = json.dumps(
            {
                "object": "event",
                "id": f"evt_{secrets.token_hex(16)}",
                "type": f"image.edit.{status}",
                "created_at": int(now),
                "data": {"id": job_id},
            }
        )
    changed = db.execute(
        "UPDATE jobs SET status = ?, completed_at = ?, expires_at = ?, result = ?, images = ?, error = ?,"
        " progress = CASE WHEN ? = 'completed' THEN 100 ELSE progress END, body = NULL, content_type = NULL,"
        " webhook_event = ?, webhook_next_at = ? WHERE id = ? AND status IN ('queued', 'in_progress')",
        (
            status,
            int(now),
            int(now) + ttl,
            json.dumps(result) if result is not None else None,
            json.dumps(images) if images else None,
            json.dumps(error) if error is not None else None,
            status,
            event,
            now if event else None,
            job_id,
        ),
    ).rowcount
    if changed:
        metrics.jobs_ended.labels(status).inc()
    return bool(changed)
