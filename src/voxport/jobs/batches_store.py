"""Batches in the job store: a batch and one job per request, created all or nothing within the quotas,
and completed once every job in it has finished (the rows beside the jobs', in one transaction)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from voxport.jobs.records import QUEUED, UNFINISHED, Batch, Job, dump, new_id
from voxport.jobs.sqlite import SQLiteWorker


class BatchRows(SQLiteWorker):
    """The batch half of `JobStore`: it uses the store's quota check and job insert (store.py)."""

    def _check_quota(self, db: sqlite3.Connection, scope: str, adding: int, max_total: int | None,
                     max_per_key: int | None) -> None:  # fmt: skip
        raise NotImplementedError

    def _insert_job(self, db: sqlite3.Connection, job: Job) -> None:
        raise NotImplementedError

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
                (batch.id, scope, idempotency_key, now, dump(metadata), webhook_url),
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
