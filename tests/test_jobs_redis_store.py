"""The Redis job store's atomic steps against a real redis-server, driven by two store instances with
their own connections (two replicas) at once: quotas, idempotency keys, a job's single finish, a
segment's single record and its job's single encode message, and webhook leases hold under the race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from voxport.cluster.jobstore import RedisJobStore
from voxport.cluster.redis import SharedRedis
from voxport.jobs.store import CANCELLED, SUCCEEDED, QuotaExceeded

BODY = {"model": "tts-1", "voice": "alloy", "input": "One. Two. Three."}


def plan(text: str, language: str | None = None) -> list[str]:
    return text.split(" ")


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[list[RedisJobStore]]:  # noqa: F811
    shared = [SharedRedis(redis_server.url, prefix="t") for _ in range(2)]
    yield [RedisJobStore(s, plan, delivery_lease_s=30) for s in shared]
    for s in shared:
        await s.close()


async def test_quota_and_idempotency_hold_when_replicas_race(stores: list[RedisJobStore]) -> None:
    async def create(i: int, scope: str, key: str | None = None):
        try:
            return await stores[i % 2].create_job(BODY, scope=scope, idempotency_key=key, max_queued=100,
                                                  max_queued_per_key=5)  # fmt: skip
        except QuotaExceeded as exc:
            return exc

    results = await asyncio.gather(*(create(i, "a") for i in range(30)))
    created = [r for r in results if not isinstance(r, QuotaExceeded)]
    assert len(created) == 5 and all(r.per_key for r in results if isinstance(r, QuotaExceeded))
    assert await stores[1].count_by_status() == {"queued": 5}

    same = await asyncio.gather(*(create(i, "b", "order-7") for i in range(20)))
    assert len({job.id for job, _ in same}) == 1
    assert sum(fresh for _, fresh in same) == 1
    job = same[0][0]
    assert job.segments == ["One.", "Two.", "Three."] and job.segments_total == 3


async def test_a_job_finishes_once_and_each_segment_is_recorded_once(stores: list[RedisJobStore]) -> None:
    job, _ = await stores[0].create_job(BODY)
    assert await stores[1].start(job.id) == "running"
    # Every segment recorded from both replicas at once: one write wins each, the doubles are counted,
    # and the job's encode is queued once.
    answers = await asyncio.gather(*(stores[i % 2].record_segment(job.id, i // 2, b"\0\0\0\0", 0.5)
                                     for i in range(6)))  # fmt: skip
    assert sorted(answers) == [-2, -2, -2, 1, 2, 3]
    stored = await stores[0].job(job.id)
    assert stored is not None and stored.segments_done == 3 and stored.segments_generated == 6
    assert stored.audio_seconds == 1.5
    r = stores[0].r
    messages = await r.xrange(stores[0].key("jobs", "stream"))
    assert [m[1][b"segment"] for m in messages] == [b"0", b"1", b"2", b"-1"]
    # A success and a cancel at once: exactly one wins, and the counts move once.
    won = await asyncio.gather(
        stores[0].finish(job.id, SUCCEEDED, result={"bytes": 4}, ttl_seconds=60, audio=b"RIFF"),
        stores[1].finish(job.id, CANCELLED),
    )
    assert sum(w is not None for w in won) == 1
    counts = await stores[1].count_by_status()
    assert sum(counts.values()) == 1 and counts.get("running", 0) == 0
    assert await stores[1].record_segment(job.id, 0, b"\0\0\0\0", 0.5) == -1  # finished: refused


async def test_a_due_webhook_is_leased_to_one_replica(stores: list[RedisJobStore]) -> None:
    for n in range(10):
        await stores[n % 2].enqueue_delivery(
            f"speechjob_{n}", "speech.job.succeeded", "https://x.test/", "{}"
        )
    claims = await asyncio.gather(stores[0].due_deliveries(), stores[1].due_deliveries())
    ids = [d.id for due, _next in claims for d in due]
    assert len(ids) == len(set(ids)) == 10
    assert (await stores[0].due_deliveries())[0] == []  # leased: not due again before the lease ends
    first = claims[0][0][0] if claims[0][0] else claims[1][0][0]
    await stores[1].record_attempt(
        first.id, status="pending", next_attempt_at=0, http_status=500, error="HTTP 500"
    )
    again, _ = await stores[0].due_deliveries()
    assert [(d.id, d.attempts, d.last_status) for d in again] == [(first.id, 1, 500)]
