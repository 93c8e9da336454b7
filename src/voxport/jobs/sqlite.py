"""The job store's SQLite file, <data-dir>/jobs/jobs.sqlite3, and the one worker thread that owns its
connection: SQLite is embedded (no server to run) and survives kill -9 (WAL, each change its own
transaction). Every call runs on that thread, so the event loop never waits on disk and the connection is
never shared between threads. `JobStore` (store.py) is this plus its rows: jobs (store.py), batches
(batches_store.py) and webhook deliveries (deliveries.py), sharing one connection and its transactions
(a batch and its jobs are created, and completed, in one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from voxport.skipped import SkippedFiles

OPEN_TIMEOUT_S = 30.0  # other processes opening the same file at once (see _open)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    idempotency_key TEXT,
    batch_id TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    request TEXT NOT NULL,
    metadata TEXT,
    webhook_url TEXT,
    segments TEXT,
    segments_done INTEGER NOT NULL DEFAULT 0,
    segments_total INTEGER NOT NULL DEFAULT 0,
    audio_seconds REAL NOT NULL DEFAULT 0,
    segments_generated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, seq);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    completed_at REAL,
    metadata TEXT,
    webhook_url TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS batches_idempotency ON batches (scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
"""


class SQLiteWorker:
    """Async facade over one SQLite connection living on its own thread."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time):
        self.root = root
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxport-jobstore")
        self._db: sqlite3.Connection | None = None
        self.skipped = SkippedFiles()  # rows that do not parse (/health)

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "jobs.sqlite3"
        # Private, as consents are: SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        for part in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(part, 0o600)
        # With --workers N every worker opens it at start. On a new file all switch it to WAL at once, and
        # SQLite answers all but one "database is locked" at once (waiting could deadlock): try again.
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                # A finished segment recorded is a finished segment kept.
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.OperationalError as exc:
                db.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # on the store's own thread
                continue
            self._db = db
            return

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._executor.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "JobStore.open() first"
        return self._db

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out
