"""The job store: jobs, batches and webhook deliveries in one SQLite file under <data-dir>/jobs/.

SQLite is embedded (no server to run) and survives kill -9 (WAL, each change its own transaction). Every
call runs on one dedicated worker thread that owns the connection, so the event loop never waits on disk
and the connection is never shared between threads.

Segment audio lives beside the database, one directory per job (`segments.SegmentFiles`): the rows say what is
known about a job, the files are its work. A finished segment is written atomically before its progress is
recorded, so after a crash the files are the truth and the counters are recomputed from them.

It is longer than 300 lines because jobs, batches and webhook deliveries share one connection, its
worker thread and its transactions (a batch and its jobs are created, and completed, in one).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from voxport.tenants import tenant_id

T = TypeVar("T")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
UNFINISHED = (QUEUED, RUNNING)

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


class QuotaExceeded(Exception):
    def __init__(self, message: str, per_key: bool):
        super().__init__(message)
        self.per_key = per_key


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def key_scope(api_key: str | None) -> str:
    """Who owns a job: its tenant, a hash of the API key that created it ('' when the server has no
    keys). Keys themselves are never stored."""
    return tenant_id(api_key)


@dataclass
class Job:
    id: str
    scope: str
    status: str
    created_at: float
    request: dict[str, Any]
    seq: int = 0
    idempotency_key: str | None = None
    batch_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    segments: list[str] | None = None  # the plan, fixed when the job first starts
    segments_done: int = 0
    segments_total: int = 0
    audio_seconds: float = 0.0
    segments_generated: int = 0  # segments the engine produced for this job, across restarts
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Batch:
    id: str
    scope: str
    created_at: float
    seq: int = 0
    idempotency_key: str | None = None
    completed_at: float | None = None
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # jobs by status
    job_ids: list[str] = field(default_factory=list)


@dataclass
class Delivery:
    id: str
    subject: str
    event: str
    url: str
    payload: str
    status: str  # pending | delivered | failed
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    seq: int = 0


_JSON_FIELDS = {"request", "metadata", "segments", "error", "result"}


def _job(row: sqlite3.Row) -> Job:
    data = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a mapping
    for name in _JSON_FIELDS:
        if data.get(name) is not None:
            data[name] = json.loads(data[name])
    return Job(**data)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class JobStore:
    """Async facade over one SQLite connection living on its own thread."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time):
        self.root = root
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxport-jobstore")
        self._db: sqlite3.Connection | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / "jobs.sqlite3", isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a finished segment recorded is a finished segment kept
        db.executescript(_SCHEMA)
        self._db = db

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

    # -- jobs -------------------------------------------------------------------------------------

    def _get(self, job_id: str, scope: str | None = None) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (scope is not None and row["scope"] != scope):
            return None
        return _job(row)

    async def get(self, job_id: str, scope: str | None = None) -> Job | None:
        """A job by id; with `scope`, only if that API key owns it."""
        return await self._run(self._get, job_id, scope)

    def _check_quota(self, db: sqlite3.Connection, scope: str, adding: int, max_total: int | None,
                     max_per_key: int | None) -> None:  # fmt: skip
        marks = ",".join("?" * len(UNFINISHED))
        if max_total is not None:
            (total,) = db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", UNFINISHED
            ).fetchone()
            if total + adding > max_total:
                raise QuotaExceeded(
                    f"The server holds {total} unfinished jobs; its limit is {max_total}.", per_key=False
                )
        if max_per_key is not None:
            (mine,) = db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE scope = ? AND status IN ({marks})", (scope, *UNFINISHED)
            ).fetchone()
            if mine + adding > max_per_key:
                raise QuotaExceeded(
                    f"This API key has {mine} unfinished jobs; its limit is {max_per_key}.", per_key=True
                )

    def _insert_job(self, db: sqlite3.Connection, job: Job) -> None:
        cur = db.execute(
            "INSERT INTO jobs (id, scope, idempotency_key, batch_id, status, created_at, request, metadata,"
            " webhook_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.scope, job.idempotency_key, job.batch_id, job.status, job.created_at,
             _dump(job.request), _dump(job.metadata), job.webhook_url),
        )  # fmt: skip
        job.seq = cur.lastrowid or 0

    async def create_job(
        self,
        request: dict[str, Any],
        *,
        scope: str = "",
        metadata: dict[str, str] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        max_queued: int | None = None,
        max_queued_per_key: int | None = None,
    ) -> tuple[Job, bool]:
        """(job, created). With an idempotency key this scope used before, the earlier job and False."""

        def create(db: sqlite3.Connection) -> tuple[Job, bool]:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE scope = ? AND idempotency_key = ?", (scope, idempotency_key)
                ).fetchone()
                if row is not None:
                    return _job(row), False
            self._check_quota(db, scope, 1, max_queued, max_queued_per_key)
            job = Job(new_id("speechjob"), scope, QUEUED, self.clock(), request, metadata=metadata,
                      webhook_url=webhook_url, idempotency_key=idempotency_key)  # fmt: skip
            self._insert_job(db, job)
            return job, True

        return await self._run(self._tx, create)

    async def create_batch(
        self,
        requests: list[dict[str, Any]],
        *,
        scope: str = "",
        metadata: dict[str, str] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        max_queued: int | None = None,
        max_queued_per_key: int | None = None,
    ) -> tuple[Batch, bool]:
        """A batch and one job per request, all or nothing (the quota counts every job)."""

        def create(db: sqlite3.Connection) -> tuple[Batch, bool]:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT id FROM batches WHERE scope = ? AND idempotency_key = ?", (scope, idempotency_key)
                ).fetchone()
                if row is not None:
                    batch = self._get_batch(row["id"])
                    assert batch is not None
                    return batch, False
            self._check_quota(db, scope, len(requests), max_queued, max_queued_per_key)
            now = self.clock()
            batch = Batch(new_id("speechbatch"), scope, now, metadata=metadata, webhook_url=webhook_url,
                          idempotency_key=idempotency_key)  # fmt: skip
            cur = db.execute(
                "INSERT INTO batches (id, scope, idempotency_key, created_at, metadata, webhook_url)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (batch.id, scope, idempotency_key, now, _dump(metadata), webhook_url),
            )
            batch.seq = cur.lastrowid or 0
            for request in requests:
                # The batch's webhook reports the batch; its jobs send none of their own.
                job = Job(new_id("speechjob"), scope, QUEUED, now, request, batch_id=batch.id)
                self._insert_job(db, job)
                batch.job_ids.append(job.id)
            batch.counts = {QUEUED: len(requests)}
            return batch, True

        return await self._run(self._tx, create)

    def _get_batch(self, batch_id: str, scope: str | None = None) -> Batch | None:
        row = self.db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None or (scope is not None and row["scope"] != scope):
            return None
        data = {k: row[k] for k in row.keys()}  # noqa: SIM118
        data["metadata"] = json.loads(data["metadata"]) if data["metadata"] else None
        batch = Batch(**data)
        rows = self.db.execute("SELECT id, status FROM jobs WHERE batch_id = ? ORDER BY seq", (batch_id,))
        for job in rows:
            batch.job_ids.append(job["id"])
            batch.counts[job["status"]] = batch.counts.get(job["status"], 0) + 1
        return batch

    async def get_batch(self, batch_id: str, scope: str | None = None) -> Batch | None:
        return await self._run(self._get_batch, batch_id, scope)

    async def complete_batch(self, batch_id: str) -> Batch | None:
        """Mark a batch completed once every job in it has finished: the batch, the first time only."""

        def complete(db: sqlite3.Connection) -> Batch | None:
            marks = ",".join("?" * len(UNFINISHED))
            (left,) = db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE batch_id = ? AND status IN ({marks})",
                (batch_id, *UNFINISHED),
            ).fetchone()
            if left:
                return None
            cur = db.execute(
                "UPDATE batches SET completed_at = ? WHERE id = ? AND completed_at IS NULL",
                (self.clock(), batch_id),
            )
            return self._get_batch(batch_id) if cur.rowcount else None

        return await self._run(self._tx, complete)

    async def list_jobs(
        self, scope: str | None, limit: int = 20, after: str | None = None
    ) -> tuple[list[Job], bool]:
        """Newest first; `after`: the id of the last job of the previous page. (jobs, has_more)."""

        def list_() -> tuple[list[Job], bool]:
            where, args = [], []
            if scope is not None:
                where.append("scope = ?")
                args.append(scope)
            if after is not None:
                # Another tenant's job is as unknown as no job: no existence oracle.
                row = self.db.execute("SELECT seq, scope FROM jobs WHERE id = ?", (after,)).fetchone()
                if row is None or (scope is not None and row["scope"] != scope):
                    raise KeyError(after)
                where.append("seq < ?")
                args.append(row["seq"])
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            rows = self.db.execute(
                f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*args, limit + 1)
            ).fetchall()
            return [_job(r) for r in rows[:limit]], len(rows) > limit

        return await self._run(list_)

    async def next_queued(self, limit: int = 100) -> list[Job]:
        """Jobs to run, oldest first: those left running by a crash first, then the queued ones."""

        def next_() -> list[Job]:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY (status = ?) DESC, seq LIMIT ?",
                (RUNNING, QUEUED, RUNNING, limit),
            ).fetchall()
            return [_job(r) for r in rows]

        return await self._run(next_)

    async def count_by_status(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
            return {r["status"]: r["n"] for r in rows}

        return await self._run(count)

    def _update(self, job_id: str, where: str, args: tuple[Any, ...], **values: Any) -> bool:
        sets = ", ".join(f"{k} = ?" for k in values)
        params = tuple(_dump(v) if k in _JSON_FIELDS else v for k, v in values.items())
        cur = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ? {where}", (*params, job_id, *args))
        return cur.rowcount > 0

    async def start(self, job_id: str, segments: list[str], done: int, audio_seconds: float) -> bool:
        """Mark a queued (or crash-interrupted) job running with its segment plan; False if cancelled."""

        def start() -> bool:
            job = self._get(job_id)
            if job is None or job.status not in UNFINISHED:
                return False
            return self._update(
                job_id, "AND status IN (?, ?)", UNFINISHED, status=RUNNING,
                started_at=job.started_at or self.clock(), segments=segments, segments_total=len(segments),
                segments_done=done, audio_seconds=audio_seconds,
            )  # fmt: skip

        return await self._run(start)

    async def segment_done(
        self, job_id: str, done: int, audio_seconds: float, generated: bool = True
    ) -> None:
        def record() -> None:
            self.db.execute(
                "UPDATE jobs SET segments_done = ?, audio_seconds = ?,"
                " segments_generated = segments_generated + ? WHERE id = ?",
                (done, audio_seconds, int(generated), job_id),
            )

        await self._run(record)

    async def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        ttl_seconds: float | None = None,
    ) -> Job | None:
        """Move an unfinished job to a final status; None if it had finished already (a cancel won)."""
        assert status in FINISHED

        def finish() -> Job | None:
            now = self.clock()
            expires = now + ttl_seconds if (result is not None and ttl_seconds) else None
            changed = self._update(
                job_id, "AND status IN (?, ?)", UNFINISHED, status=status, finished_at=now,
                result=result, error=error, expires_at=expires,
            )  # fmt: skip
            return self._get(job_id) if changed else None

        return await self._run(finish)

    async def delete(self, job_id: str) -> None:
        await self._run(lambda: self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    async def forget_result(self, job_id: str) -> None:
        """The audio is gone (deleted by its owner, or expired): the job stays, its result does not."""
        await self._run(lambda: self.db.execute("UPDATE jobs SET result = NULL WHERE id = ?", (job_id,)))

    async def expired(self) -> list[str]:
        """Jobs whose result has outlived job_result_ttl_hours: their results are forgotten here, and
        their ids returned so that the caller removes the audio."""

        def expire(db: sqlite3.Connection) -> list[str]:
            now = self.clock()
            rows = db.execute(
                "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).fetchall()
            db.execute(
                "UPDATE jobs SET result = NULL, expires_at = NULL"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            )
            return [r["id"] for r in rows]

        return await self._run(self._tx, expire)

    # -- webhook deliveries -----------------------------------------------------------------------

    async def enqueue_delivery(self, subject: str, event: str, url: str, payload: str) -> Delivery:
        def add() -> Delivery:
            now = self.clock()
            delivery = Delivery(new_id("msg"), subject, event, url, payload, "pending", now, now)
            cur = self.db.execute(
                "INSERT INTO deliveries (id, subject, event, url, payload, status, created_at,"
                " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.id, subject, event, url, payload, delivery.status, now, now),
            )
            delivery.seq = cur.lastrowid or 0
            return delivery

        return await self._run(add)

    async def due_deliveries(self, now: float | None = None) -> tuple[list[Delivery], float | None]:
        """(pending deliveries due now, when the next one after them is due)."""

        def due() -> tuple[list[Delivery], float | None]:
            at = self.clock() if now is None else now
            rows = self.db.execute(
                "SELECT * FROM deliveries WHERE status = 'pending' ORDER BY next_attempt_at"
            ).fetchall()
            ready = [Delivery(**dict(r)) for r in rows if r["next_attempt_at"] <= at]
            later = [r["next_attempt_at"] for r in rows if r["next_attempt_at"] > at]
            return ready, (min(later) if later else None)

        return await self._run(due)

    async def record_attempt(self, delivery_id: str, *, status: str, next_attempt_at: float,
                             http_status: int | None, error: str | None) -> None:  # fmt: skip
        def record() -> None:
            self.db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, status = ?, next_attempt_at = ?,"
                " last_status = ?, last_error = ? WHERE id = ?",
                (status, next_attempt_at, http_status, error, delivery_id),
            )

        await self._run(record)

    async def deliveries(self, subject: str | None = None) -> list[Delivery]:
        def all_() -> list[Delivery]:
            if subject is None:
                rows = self.db.execute("SELECT * FROM deliveries ORDER BY seq").fetchall()
            else:
                rows = self.db.execute("SELECT * FROM deliveries WHERE subject = ? ORDER BY seq", (subject,))
            return [Delivery(**dict(r)) for r in rows]

        return await self._run(all_)
