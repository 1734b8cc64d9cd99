"""The SQLite database every worker of one server shares, in the data directory.

SQLite in WAL mode lets the workers (separate processes) read while one
writes; every change runs in its own ``BEGIN IMMEDIATE`` transaction, so two
workers never claim the same job. Calls are short and made from any thread:
one connection per process, behind a lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

FILE = "imgedit.sqlite3"
#: Seconds a write waits for another worker's transaction before it fails.
BUSY_TIMEOUT_SECONDS = 30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    expires_at INTEGER,
    progress INTEGER NOT NULL DEFAULT 0,
    model TEXT NOT NULL,
    body BLOB,
    content_type TEXT,
    result TEXT,
    images TEXT,
    error TEXT,
    runner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT,
    webhook_event TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (status, lease_until);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_next_at);
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    held_until REAL NOT NULL,
    expires_at INTEGER NOT NULL,
    status INTEGER,
    headers TEXT,
    body BLOB,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
"""


class Database:
    """The shared database of one data directory.

    Args:
        directory: the data directory; the file is made owner-only there.
    """

    def __init__(self, directory: Path) -> None:
        path = directory / FILE
        if not path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path = path
        self._connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows (a job's request once it ended, expired answers) are overwritten, not left in free pages.
            self._connection.execute("PRAGMA secure_delete=ON")
            self._connection.executescript(_SCHEMA)  # every statement is IF NOT EXISTS: safe in every worker

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back when it raises."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows one read returns."""
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            self._connection.close()
