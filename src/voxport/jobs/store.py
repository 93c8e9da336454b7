"""The job store (docs/jobs.md): jobs, batches and webhook deliveries in one SQLite file under
<data-dir>/jobs/ (`sqlite.SQLiteWorker`: one connection on its own thread). This module holds the jobs'
rows; batches_store.py and deliveries.py the others'; records.py what they are.

Segment audio lives beside the database, one directory per job (`segments.SegmentFiles`): the rows say what is
known about a job, the files are its work. A finished segment is written atomically before its progress is
recorded, so after a crash the files are the truth and the counters are recomputed from them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from voxport.jobs.batches_store import BatchRows
from voxport.jobs.deliveries import DeliveryRows
from voxport.jobs.records import (
    CANCELLED,
    FAILED,
    FINISHED,
    JSON_FIELDS,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    UNFINISHED,
    Batch,
    Delivery,
    Job,
    QuotaExceeded,
    dump,
    job_from_row,
    key_scope,
    new_id,
)
from voxport.skipped import UNREADABLE

__all__ = ["CANCELLED", "FAILED", "FINISHED", "QUEUED", "RUNNING", "SUCCEEDED", "UNFINISHED", "Batch",
           "Delivery", "Job", "JobStore", "QuotaExceeded", "key_scope", "new_id"]  # fmt: skip


class JobStore(BatchRows, DeliveryRows):
    """Jobs, batches and webhook deliveries, over one SQLite connection living on its own thread."""

    # -- jobs -------------------------------------------------------------------------------------

    def _get(self, job_id: str, scope: str | None = None) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (scope is not None and row["scope"] != scope):
            return None
        found = self._parse([row])
        return found[0] if found else None

    def _parse(self, rows: list[sqlite3.Row]) -> list[Job]:
        """The rows that parse; a damaged one is skipped (logged once, named in /health), never a 500."""
        jobs = []
        for row in rows:
            try:
                jobs.append(job_from_row(row))
            except UNREADABLE as exc:
                self.skipped.add("job", str(row["id"]), exc)
        return jobs

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
             dump(job.request), dump(job.metadata), job.webhook_url),
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
                    return job_from_row(row), False
            self._check_quota(db, scope, 1, max_queued, max_queued_per_key)
            job = Job(new_id("speechjob"), scope, QUEUED, self.clock(), request, metadata=metadata,
                      webhook_url=webhook_url, idempotency_key=idempotency_key)  # fmt: skip
            self._insert_job(db, job)
            return job, True

        return await self._run(self._tx, create)

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
            return self._parse(rows[:limit]), len(rows) > limit

        return await self._run(list_)

    async def next_queued(self, limit: int = 100) -> list[Job]:
        """Jobs to run, oldest first: those left running by a crash first, then the queued ones."""

        def next_() -> list[Job]:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY (status = ?) DESC, seq LIMIT ?",
                (RUNNING, QUEUED, RUNNING, limit),
            ).fetchall()
            return self._parse(rows)

        return await self._run(next_)

    async def count_by_status(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
            return {r["status"]: r["n"] for r in rows}

        return await self._run(count)

    def _update(self, job_id: str, where: str, args: tuple[Any, ...], **values: Any) -> bool:
        sets = ", ".join(f"{k} = ?" for k in values)
        params = tuple(dump(v) if k in JSON_FIELDS else v for k, v in values.items())
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
