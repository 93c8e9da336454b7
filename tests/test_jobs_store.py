"""The job store and segment files on their own: ids, idempotency, quotas, listing, finishing races,
result expiry, batches, and the resume bookkeeping (segment files are the truth after a crash)."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxport.jobs.segments import SegmentFiles
from voxport.jobs.store import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobStore,
    QuotaExceeded,
    key_scope,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path):
    s = JobStore(tmp_path / "jobs", clock=Clock())
    await s.open()
    yield s
    await s.close()


BODY = {"model": "voxcpm2", "input": "Hello there.", "voice": "alloy"}


async def test_create_get_and_idempotency(store: JobStore) -> None:
    job, created = await store.create_job(BODY, metadata={"a": "b"}, idempotency_key="k1", scope="s")
    assert created and job.id.startswith("speechjob_") and job.status == QUEUED
    again, created_again = await store.create_job({**BODY, "input": "other"}, idempotency_key="k1", scope="s")
    assert (again.id, created_again) == (job.id, False)
    other, created_other = await store.create_job(BODY, idempotency_key="k1", scope="another key")
    assert created_other and other.id != job.id
    got = await store.get(job.id, scope="s")
    assert got is not None and got.request == BODY and got.metadata == {"a": "b"}
    assert await store.get(job.id, scope="someone else") is None


async def test_quotas_total_and_per_key(store: JobStore) -> None:
    await store.create_job(BODY, scope="a", max_queued=3, max_queued_per_key=2)
    await store.create_job(BODY, scope="a", max_queued=3, max_queued_per_key=2)
    with pytest.raises(QuotaExceeded) as per_key:
        await store.create_job(BODY, scope="a", max_queued=3, max_queued_per_key=2)
    assert per_key.value.per_key
    await store.create_job(BODY, scope="b", max_queued=3, max_queued_per_key=2)
    with pytest.raises(QuotaExceeded) as total:
        await store.create_job(BODY, scope="c", max_queued=3, max_queued_per_key=2)
    assert not total.value.per_key
    with pytest.raises(QuotaExceeded):  # a batch counts every job it adds
        await store.create_batch([BODY, BODY], scope="d", max_queued=4)


async def test_list_newest_first_with_cursor(store: JobStore) -> None:
    ids = [(await store.create_job(BODY, scope="s"))[0].id for _ in range(5)]
    await store.create_job(BODY, scope="other")
    page, more = await store.list_jobs("s", limit=2)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page2, more2 = await store.list_jobs("s", limit=2, after=page[-1].id)
    assert [j.id for j in page2] == ids[::-1][2:4] and more2
    page3, more3 = await store.list_jobs("s", limit=2, after=page2[-1].id)
    assert [j.id for j in page3] == ids[:1] and not more3
    with pytest.raises(KeyError):
        await store.list_jobs("s", after="speechjob_nope")


async def test_finish_once_and_cancel_wins(store: JobStore) -> None:
    job, _ = await store.create_job(BODY)
    assert await store.start(job.id, ["a", "b"], 0, 0.0)
    assert (await store.get(job.id)).status == RUNNING
    assert (await store.finish(job.id, CANCELLED)) is not None
    # The runner finishing afterwards does not overwrite the cancel.
    assert await store.finish(job.id, SUCCEEDED, result={"bytes": 1}) is None
    assert (await store.get(job.id)).status == CANCELLED
    assert not await store.start(job.id, ["a"], 0, 0.0)


async def test_result_expiry(store: JobStore) -> None:
    job, _ = await store.create_job(BODY)
    await store.start(job.id, ["a"], 0, 0.0)
    await store.finish(job.id, SUCCEEDED, result={"bytes": 10}, ttl_seconds=3600)
    assert await store.expired() == []
    store.clock.now += 3601
    assert await store.expired() == [job.id]
    assert (await store.get(job.id)).result is None
    assert await store.expired() == []


async def test_batch_counts_and_completes_once(store: JobStore) -> None:
    batch, created = await store.create_batch(
        [BODY] * 3, webhook_url="https://example.com/h", idempotency_key="b"
    )
    assert created and batch.id.startswith("speechbatch_") and len(batch.job_ids) == 3
    assert (await store.create_batch([BODY], idempotency_key="b"))[0].id == batch.id
    for job_id in batch.job_ids[:2]:
        await store.finish(job_id, SUCCEEDED, result={})
    assert await store.complete_batch(batch.id) is None
    await store.finish(batch.job_ids[2], CANCELLED)
    done = await store.complete_batch(batch.id)
    assert done is not None and done.counts == {SUCCEEDED: 2, CANCELLED: 1} and done.completed_at
    assert await store.complete_batch(batch.id) is None  # the completion (and its webhook) happens once


async def test_running_jobs_resume_first_and_survive_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    await store.open()
    first, _ = await store.create_job(BODY)
    second, _ = await store.create_job(BODY)
    await store.start(second.id, ["x", "y"], 0, 0.0)
    await store.segment_done(second.id, 1, 0.5)
    await store.close()
    reopened = JobStore(tmp_path / "jobs")  # a new process after a crash
    await reopened.open()
    order = [j.id for j in await reopened.next_queued()]
    assert order == [second.id, first.id]
    job = await reopened.get(second.id)
    assert (job.segments, job.segments_done, job.segments_generated) == (["x", "y"], 1, 1)
    await reopened.close()


def test_segment_files_are_the_resume_point(tmp_path: Path) -> None:
    files = SegmentFiles(tmp_path)
    a = np.linspace(-1, 1, 100, dtype=np.float32)
    files.write_segment("j", 0, a)
    files.write_segment("j", 1, a[:10])
    files.write_segment("j", 3, a)  # not contiguous: segment 2 is missing, so 3 does not count
    (files.dir("j") / ".tmp-interrupted").write_bytes(b"half")  # a write a crash cut short
    assert files.done("j", 4) == (2, 110)
    np.testing.assert_array_equal(files.read_segment("j", 0), a)
    files.drop_segments("j")
    assert files.done("j", 4) == (0, 0) and not list(files.dir("j").iterdir())
    files.remove("j")
    assert not files.dir("j").exists()


def test_key_scope_hides_the_key() -> None:
    assert key_scope(None) == "" and key_scope("sk-1") != key_scope("sk-2")
    assert "sk-1" not in key_scope("sk-1")


def _open_in_step(root: str, rounds: int, barrier: Any) -> None:
    """One process of `--workers N` starting: open the store of each round's fresh data dir, all at once."""

    async def open_and_close(path: Path) -> None:
        store = JobStore(path)
        await store.open()
        await store.close()

    failed = 0
    for i in range(rounds):
        barrier.wait(120)  # a bound, should a process die: the test fails, never hangs
        try:
            asyncio.run(open_and_close(Path(root) / str(i)))
        except sqlite3.OperationalError:
            failed += 1  # told at the end: the others must not wait at the barrier for this one
    raise SystemExit(1 if failed else 0)


def test_workers_open_one_new_store_at_once(tmp_path: Path) -> None:
    """Every worker opens the one jobs.sqlite3 at start; on a fresh data dir they all switch it to WAL at
    once, which SQLite answers 'database is locked' (no busy wait: it would deadlock) to all but one."""
    processes, rounds = 4, 30
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    args = (str(tmp_path), rounds, barrier)
    opened = [ctx.Process(target=_open_in_step, args=args) for _ in range(processes)]
    for proc in opened:
        proc.start()
    for proc in opened:
        proc.join(300)
    assert [proc.exitcode for proc in opened] == [0] * processes
