"""The queue runner's upkeep, every half second: renew the claims on the messages being worked on (so a
live replica's work is never reclaimed), stop work on jobs cancelled through another replica, refresh the
job gauges, and now and then sweep local result copies and consumers long gone from the group. And the
guard against a segment that takes down every replica that claims it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from voxport.errors import VoxportError
from voxport.jobs.store import UNFINISHED

if TYPE_CHECKING:
    from voxport.cluster.jobqueue import RedisJobRunner

log = logging.getLogger("voxport.jobs")

MAX_CLAIMS = 5  # a message reclaimed this often (its replicas kept dying on it) fails its job
WATCH_S = 0.5
COUNTS_S = 2.0  # how often the job gauges are refreshed from Redis
SWEEP_S = 60.0


async def watch(runner: RedisJobRunner) -> None:
    beat = counts = sweep = 0.0
    while True:
        await asyncio.sleep(WATCH_S)
        now = time.monotonic()
        try:
            if runner.inflight and now - beat >= runner.visibility_s / 3:
                beat = now
                await runner.r.xclaim(runner.stream, runner.group, runner.consumer, 0, list(runner.inflight),
                                      justid=True)  # fmt: skip
            await check_cancels(runner)
            if now - counts >= COUNTS_S:
                counts = now
                await runner.hooks.on_started()
            if now - sweep >= SWEEP_S:
                sweep = now
                await runner.results.sweep()
                await drop_departed(runner)
        except (RedisError, OSError) as exc:
            runner.shared.mark(exc)
        except VoxportError:
            pass  # the store said Redis is away (and marked it)


async def check_cancels(runner: RedisJobRunner) -> None:
    """A job finished elsewhere (cancelled, deleted): this replica's work on it stops."""
    jobs = sorted({job for job, _index, _switch in runner.inflight.values()})
    if not jobs:
        return
    async with runner.r.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hget(runner.shared.key("job", job), "status")
        statuses = await pipe.execute()
    gone = {job for job, status in zip(jobs, statuses, strict=True)
            if status is None or status.decode() not in UNFINISHED}  # fmt: skip
    for job, _index, switch in list(runner.inflight.values()):
        if job in gone:
            switch.set()


async def drop_departed(runner: RedisJobRunner) -> None:
    """Consumers (replicas that stopped) with nothing pending and idle for long leave the group."""
    idle_ms = max(600.0, 10 * runner.visibility_s) * 1000
    for consumer in await runner.r.xinfo_consumers(runner.stream, runner.group):
        name = consumer["name"]
        name = name.decode() if isinstance(name, bytes) else name
        if name != runner.consumer and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
            await runner.r.xgroup_delconsumer(runner.stream, runner.group, name)


async def drop_poisoned(runner: RedisJobRunner, messages: list) -> list:
    """Reclaimed messages, less those claimed MAX_CLAIMS times already: their jobs fail, so that one
    input cannot take down the replicas one after another. (A clean stop hands messages back as new
    ones, so only replicas that died count.)"""
    kept = []
    for msg_id, fields in messages:
        pending = await runner.r.xpending_range(runner.stream, runner.group, min=msg_id, max=msg_id, count=1)
        claims = pending[0]["times_delivered"] if pending else 0
        if not fields or claims <= MAX_CLAIMS:
            kept.append((msg_id, fields))
            continue
        job = fields[b"job"].decode()
        log.error("job %s: a segment was claimed %d times by replicas that died; the job fails", job, claims)
        message = (
            f"A segment of this job was abandoned {claims - 1} times by servers that stopped while making it."
        )
        await runner.fail(job, {"message": message, "type": "server_error", "param": None,
                                "code": "job_segment_abandoned"})  # fmt: skip
        await runner.r.xack(runner.stream, runner.group, msg_id)
        await runner.r.xdel(runner.stream, msg_id)
    return kept
