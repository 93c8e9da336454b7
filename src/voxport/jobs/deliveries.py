"""Webhook deliveries in the job store: each is a row with its payload, its attempts and when the next is
due, so that retries continue after a restart (jobs/webhooks.py sends them)."""

from __future__ import annotations

from voxport.jobs.records import Delivery, new_id
from voxport.jobs.sqlite import SQLiteWorker


class DeliveryRows(SQLiteWorker):
    """The deliveries half of `JobStore`."""

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
