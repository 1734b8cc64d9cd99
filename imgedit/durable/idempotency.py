"""Idempotency keys: the first answer to a key is kept, and a retry with the same key gets it again.

A key belongs to one API key (its ``owner``) and holds one request, known by
its fingerprint. While the first request runs, the key is held until its
deadline; a retry meanwhile is told so. Once answered, the answer is kept
until the key expires, and a retry with the same request replays it; a retry
with another request under the same key is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from imgedit.durable.database import Database


@dataclass(frozen=True, kw_only=True)
class StoredAnswer:
    """An answer as it was sent: status, the headers worth repeating, body."""

    status: int
    headers: dict[str, str]
    body: bytes


#: What :meth:`IdempotencyTable.begin` found: the key is new (or abandoned) and now held, it holds another
#: request, or it is held by a request still running.
Begun = Literal["begun", "mismatch", "busy"]


class IdempotencyTable:
    """The keys of one server.

    Args:
        database: the shared database.
        ttl: seconds an answer is kept (``IMGEDIT_IDEMPOTENCY_TTL``).
    """

    def __init__(self, database: Database, ttl: int) -> None:
        self.database = database
        self.ttl = ttl

    def begin(self, owner: str, key: str, fingerprint: str, now: float, hold: float) -> Begun | StoredAnswer:
        """Hold ``key`` for ``hold`` seconds for a new request, or say why not, or give the answer kept."""
        with self.database.transaction() as db:
            row = db.execute(
                "SELECT fingerprint, state, held_until, expires_at, status, headers, body FROM idempotency"
                " WHERE owner = ? AND key = ?",
                (owner, key),
            ).fetchone()
            if row is not None and row["expires_at"] < now:
                db.execute("DELETE FROM idempotency WHERE owner = ? AND key = ?", (owner, key))
                row = None
            if row is None:
                db.execute(
                    "INSERT INTO idempotency (owner, key, fingerprint, state, held_until, expires_at)"
                    " VALUES (?, ?, ?, 'running', ?, ?)",
                    (owner, key, fingerprint, now + hold, int(now) + self.ttl),
                )
                return "begun"
            if row["fingerprint"] != fingerprint:
                return "mismatch"
            if row["state"] == "done":
                return StoredAnswer(status=row["status"], headers=json.loads(row["headers"]), body=row["body"])
            if row["held_until"] < now:  # its worker died: this request takes the key over
                db.execute(
                    "UPDATE idempotency SET held_until = ? WHERE owner = ? AND key = ?", (now + hold, owner, key)
                )
                return "begun"
            return "busy"

    def keep(self, owner: str, key: str, answer: StoredAnswer, now: float) -> None:
        """The request under ``key`` was answered: keep the answer for :attr:`ttl` seconds."""
        with self.database.transaction() as db:
            db.execute(
                "UPDATE idempotency SET state = 'done', status = ?, headers = ?, body = ?, expires_at = ?"
                " WHERE owner = ? AND key = ?",
                (answer.status, json.dumps(answer.headers), answer.body, int(now) + self.ttl, owner, key),
            )

    def release(self, owner: str, key: str) -> None:
        """Forget ``key``: its answer is not kept (a retry runs again)."""
        with self.database.transaction() as db:
            db.execute("DELETE FROM idempotency WHERE owner = ? AND key = ?", (owner, key))

    def sweep(self, now: float) -> int:
        """Forget the keys past their time; returns how many."""
        with self.database.transaction() as db:
            return int(db.execute("DELETE FROM idempotency WHERE expires_at < ?", (int(now),)).rowcount)
