"""Speech jobs, batches and webhook deliveries in the shared Redis: the job store every replica reads and
changes, so that any of them answers for any job (`voxport.jobs.backend.JobStoreAPI`).

Layout, under `<prefix>:`: `job:<id>` (a hash: the job's fields), `job:<id>:seg` (its finished segments,
float32, by index), `job:<id>:audio` (the encoded result, expiring after `job_result_ttl_hours`),
`jobs:list:<scope>` and `jobs:all` (ids by creation order), `jobs:counts` (jobs by status),
`jobs:unfinished:<scope>` (the per-key quota's count), `idem:job|batch:<scope>:<key>` (idempotency keys),
`batch:<id>` and `batch:<id>:jobs`, `delivery:<id>` and `deliveries:due` (webhooks, by when they are due),
and `jobs:stream` (the queue: one message per segment to generate, and one per job to encode; see
`jobqueue`). Every change that must be atomic is one Lua script (`jobscripts`). Redis failing answers
`unavailable` (retry later): a job store that is away is an outage, not a bug.
"""

from __future__ import annotations

import functools
import json
import time
from asyncio import to_thread
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from voxport.cluster import jobscripts
from voxport.cluster.redis import SharedRedis
from voxport.errors import VoxportError
from voxport.jobs.store import FINISHED, Batch, Delivery, Job, QuotaExceeded, new_id

T = TypeVar("T")

_JSON = ("request", "metadata", "segments", "error", "result")
_FLOAT = ("created_at", "started_at", "finished_at", "expires_at", "audio_seconds")
_INT = ("seq", "segments_done", "segments_total", "segments_generated")
_JOB_FIELDS = set(Job.__dataclass_fields__)


def _dump(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _text(data: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in data.items()}


def job_from_hash(data: dict[bytes, bytes], now: float) -> Job | None:
    if not data:
        return None
    raw = _text(data)
    values: dict[str, Any] = {k: v for k, v in raw.items() if k in _JOB_FIELDS}
    for name in _JSON:
        if name in values:
            values[name] = json.loads(values[name])
    for name in _FLOAT:
        if name in values:
            values[name] = float(values[name])
    for name in _INT:
        if name in values:
            values[name] = int(values[name])
    job = Job(**values)
    if job.expires_at is not None and job.expires_at <= now:  # its audio has expired with its key
        job.result = None
    return job


def guarded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Redis away: an outage the client can retry, recorded on the shared connection (`SharedRedis.mark`)."""

    @functools.wraps(fn)
    async def call(self: RedisJobStore, *args: Any, **kw: Any) -> T:
        try:
            return await fn(self, *args, **kw)
        except (RedisError, OSError) as exc:
            self.redis.mark(exc)
            raise VoxportError("unavailable", "The job store (Redis) is unreachable; try again shortly.",
                               code="job_store_unavailable", retry_after=5) from None  # fmt: skip

    return call


class RedisJobStore:
    def __init__(self, shared: SharedRedis, planner: Callable[[str, str | None], list[str]],
                 delivery_lease_s: float, clock: Callable[[], float] = time.time):  # fmt: skip
        self.redis = shared
        self.r = shared.client
        self.planner = planner  # a job's segments, fixed at submission (its queue messages are made then)
        self.delivery_lease_s = delivery_lease_s
        self.clock = clock
        scripts = ("CREATE_JOB", "CREATE_BATCH", "START", "RECORD_SEGMENT", "FINISH", "DELETE",
                   "COMPLETE_BATCH", "CLAIM_DELIVERIES")  # fmt: skip
        self.scripts = {name: self.r.register_script(getattr(jobscripts, name)) for name in scripts}

    def key(self, *parts: str) -> str:
        return self.redis.key(*parts)

    async def run(self, name: str, *args: Any) -> Any:
        return await self.scripts[name](keys=[], args=[self.redis.prefix, *args])

    async def open(self) -> None:  # the connection is the app's (SharedRedis), opened and closed there
        pass

    close = open

    # -- jobs -------------------------------------------------------------------------------------

    async def job(self, job_id: str) -> Job | None:
        return job_from_hash(await self.r.hgetall(self.key("job", job_id)), self.clock())

    @guarded
    async def get(self, job_id: str, scope: str | None = None) -> Job | None:
        job = await self.job(job_id)
        return None if job is None or (scope is not None and job.scope != scope) else job

    def _quota(self, answer: list[bytes], max_total: int, max_key: int) -> QuotaExceeded:
        what, count = answer[1].decode(), int(answer[2])
        if what == "total":
            return QuotaExceeded(
                f"The server holds {count} unfinished jobs; its limit is {max_total}.", False
            )
        return QuotaExceeded(f"This API key has {count} unfinished jobs; its limit is {max_key}.", True)

    @guarded
    async def create_job(self, request: dict[str, Any], *, scope: str = "",
                         metadata: dict[str, str] | None = None, webhook_url: str | None = None,
                         idempotency_key: str | None = None, max_queued: int | None = None,
                         max_queued_per_key: int | None = None) -> tuple[Job, bool]:  # fmt: skip
        plan = await to_thread(self.planner, request["input"], request.get("language"))
        most, most_key = max_queued or 2**62, max_queued_per_key or 2**62
        answer = await self.run(
            "CREATE_JOB", scope, idempotency_key or "", most, most_key, repr(self.clock()),
            new_id("speechjob"), _dump(request), _dump(plan), len(plan), _dump(metadata), webhook_url or "",
        )  # fmt: skip
        if answer[0] == b"quota":
            raise self._quota(answer, most, most_key)
        job = await self.job(answer[1].decode())
        assert job is not None
        return job, answer[0] == b"created"

    @guarded
    async def create_batch(self, requests: list[dict[str, Any]], *, scope: str = "",
                           metadata: dict[str, str] | None = None, webhook_url: str | None = None,
                           idempotency_key: str | None = None, max_queued: int | None = None,
                           max_queued_per_key: int | None = None) -> tuple[Batch, bool]:  # fmt: skip
        plans = await to_thread(lambda: [self.planner(q["input"], q.get("language")) for q in requests])
        jobs: list[Any] = [x for q, plan in zip(requests, plans, strict=True)
                           for x in (new_id("speechjob"), _dump(q), _dump(plan), len(plan))]  # fmt: skip
        most, most_key = max_queued or 2**62, max_queued_per_key or 2**62
        answer = await self.run(
            "CREATE_BATCH", scope, idempotency_key or "", most, most_key, repr(self.clock()),
            new_id("speechbatch"), _dump(metadata), webhook_url or "", len(requests), *jobs,
        )  # fmt: skip
        if answer[0] == b"quota":
            raise self._quota(answer, most, most_key)
        batch = await self._get_batch(answer[1].decode())
        assert batch is not None
        return batch, answer[0] == b"created"

    async def _get_batch(self, batch_id: str, scope: str | None = None) -> Batch | None:
        raw = _text(await self.r.hgetall(self.key("batch", batch_id)))
        if not raw or (scope is not None and raw["scope"] != scope):
            return None
        batch = Batch(raw["id"], raw["scope"], float(raw["created_at"]), seq=int(raw["seq"]),
                      idempotency_key=raw.get("idempotency_key"), webhook_url=raw.get("webhook_url"),
                      metadata=json.loads(raw["metadata"]) if raw.get("metadata") else None,
                      completed_at=float(raw["completed_at"]) if "completed_at" in raw else None)  # fmt: skip
        ids = [i.decode() for i in await self.r.lrange(self.key("batch", batch_id, "jobs"), 0, -1)]
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.key("job", job_id), "status")
            statuses = await pipe.execute()
        for job_id, status in zip(ids, statuses, strict=True):
            if status is not None:  # a deleted job leaves its batch
                batch.job_ids.append(job_id)
                batch.counts[status.decode()] = batch.counts.get(status.decode(), 0) + 1
        return batch

    @guarded
    async def get_batch(self, batch_id: str, scope: str | None = None) -> Batch | None:
        return await self._get_batch(batch_id, scope)

    @guarded
    async def complete_batch(self, batch_id: str) -> Batch | None:
        if not await self.run("COMPLETE_BATCH", batch_id, repr(self.clock())):
            return None
        return await self._get_batch(batch_id)

    @guarded
    async def list_jobs(self, scope: str | None, limit: int = 20, after: str | None = None
                        ) -> tuple[list[Job], bool]:  # fmt: skip
        index = self.key("jobs", "all") if scope is None else self.key("jobs", "list", scope)
        top: str | float = "+inf"
        if after is not None:
            seq, owner = await self.r.hmget(self.key("job", after), ["seq", "scope"])
            if seq is None or (scope is not None and (owner or b"").decode() != scope):  # no oracle
                raise KeyError(after)
            top = f"({int(seq)}"
        ids = await self.r.zrevrangebyscore(index, top, "-inf", start=0, num=limit + 1)
        async with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids[:limit]:
                pipe.hgetall(self.key("job", job_id.decode()))
            rows = await pipe.execute()
        now = self.clock()
        jobs = [job for job in (job_from_hash(row, now) for row in rows) if job is not None]
        return jobs, len(ids) > limit

    @guarded
    async def count_by_status(self) -> dict[str, int]:
        counts = _text(await self.r.hgetall(self.key("jobs", "counts")))
        return {status: int(n) for status, n in counts.items() if int(n) > 0}

    async def start(self, job_id: str) -> str | None:
        """A claimed segment's job is running now; its status (None if it is gone)."""
        status = await self.run("START", job_id, repr(self.clock()))
        return status.decode() if status else None

    async def record_segment(self, job_id: str, index: int, audio: bytes, seconds: float) -> int:
        return int(await self.run("RECORD_SEGMENT", job_id, index, audio, repr(seconds)))

    @guarded
    async def finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None,
                     error: dict[str, Any] | None = None, ttl_seconds: float | None = None,
                     audio: bytes | None = None) -> Job | None:  # fmt: skip
        """Move an unfinished job to a final status (with its audio); None if it had finished already."""
        assert status in FINISHED
        now = self.clock()
        expires = repr(now + ttl_seconds) if (result is not None and ttl_seconds) else ""
        ttl = max(1, int(ttl_seconds or 0))
        if not await self.run("FINISH", job_id, status, repr(now), _dump(result), _dump(error), expires,
                              audio if audio is not None else b"", ttl):  # fmt: skip
            return None
        return await self.job(job_id)

    @guarded
    async def delete(self, job_id: str) -> None:
        await self.run("DELETE", job_id)

    @guarded
    async def discard(self, job_id: str) -> None:
        """A job's work and audio (the job itself stays)."""
        await self.r.delete(self.key("job", job_id, "seg"), self.key("job", job_id, "audio"))

    @guarded
    async def audio(self, job_id: str) -> bytes | None:
        return await self.r.get(self.key("job", job_id, "audio"))

    # -- webhook deliveries -----------------------------------------------------------------------

    @guarded
    async def enqueue_delivery(self, subject: str, event: str, url: str, payload: str) -> Delivery:
        now = self.clock()
        delivery = Delivery(new_id("msg"), subject, event, url, payload, "pending", now, now)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.key("delivery", delivery.id), mapping={
                "id": delivery.id, "subject": subject, "event": event, "url": url, "payload": payload,
                "status": "pending", "created_at": repr(now), "next_attempt_at": repr(now), "attempts": 0,
            })  # fmt: skip
            pipe.zadd(self.key("deliveries", "due"), {delivery.id: now})
            pipe.rpush(self.key("deliveries", "by-subject", subject), delivery.id)
            await pipe.execute()
        return delivery

    async def _delivery(self, delivery_id: str) -> Delivery | None:
        raw = _text(await self.r.hgetall(self.key("delivery", delivery_id)))
        if not raw:
            return None
        return Delivery(raw["id"], raw["subject"], raw["event"], raw["url"], raw["payload"], raw["status"],
                        float(raw["created_at"]), float(raw["next_attempt_at"]), int(raw["attempts"]),
                        int(raw["last_status"]) if raw.get("last_status") else None,
                        raw.get("last_error") or None)  # fmt: skip

    async def due_deliveries(self, now: float | None = None) -> tuple[list[Delivery], float | None]:
        """Due deliveries, leased to this replica (see jobscripts.CLAIM_DELIVERIES); when the next is due."""
        at = self.clock() if now is None else now
        try:
            ids = await self.run("CLAIM_DELIVERIES", repr(at), repr(self.delivery_lease_s), 32)
            found = [await self._delivery(i.decode()) for i in ids]
            nxt = await self.r.zrange(self.key("deliveries", "due"), 0, 0, withscores=True)
        except (RedisError, OSError) as exc:  # the dispatcher looks again in a second
            self.redis.mark(exc)
            return [], at + 1.0
        return [d for d in found if d is not None], (nxt[0][1] if nxt else None)

    async def record_attempt(self, delivery_id: str, *, status: str, next_attempt_at: float,
                             http_status: int | None, error: str | None) -> None:  # fmt: skip
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(self.key("delivery", delivery_id), "attempts", 1)
            pipe.hset(self.key("delivery", delivery_id), mapping={
                "status": status, "next_attempt_at": repr(next_attempt_at),
                "last_status": "" if http_status is None else http_status, "last_error": error or "",
            })  # fmt: skip
            if status == "pending":
                pipe.zadd(self.key("deliveries", "due"), {delivery_id: next_attempt_at})
            else:
                pipe.zrem(self.key("deliveries", "due"), delivery_id)
            await pipe.execute()

    async def deliveries(self, subject: str) -> list[Delivery]:
        ids = await self.r.lrange(self.key("deliveries", "by-subject", subject), 0, -1)
        found = [await self._delivery(i.decode()) for i in ids]
        return [d for d in found if d is not None]
