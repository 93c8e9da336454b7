"""Speech jobs queued in Redis Streams and run by whichever replica has room (`--redis-url`).

Queue: `<prefix>:jobs:stream`, one consumer group (`runners`), one consumer per process. A job's
submission adds one message per segment (in the same Lua script that creates the job); recording its last
segment adds one message to encode it (once: `jobscripts.RECORD_SEGMENT`). A replica reads (XREADGROUP)
at most as many messages as it can start generating now (`SegmentWork.parallel` and `free_slots`: live
requests first), generates each at low priority, records it, and only then acknowledges and deletes the
message (XACK, XDEL).

Reclaim: while it works on a message the replica renews its claim every third of
`job_visibility_timeout_s` (XCLAIM JUSTID), so a slow segment is never taken from a live replica. A
replica that dies stops renewing; once its messages have been idle that long, another replica takes them
over (XAUTOCLAIM). A reclaimed segment that was already recorded is skipped; so nothing is generated twice
unless a replica dies between generating a segment and recording it (that segment is generated again).
A replica that stops cleanly hands its unfinished messages back at once (re-added, then acknowledged).

Audio: see `voxport.cluster.jobs.ResultFiles`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING

import numpy as np
from redis.exceptions import RedisError, ResponseError

from voxport.cluster.jobstore import RedisJobStore
from voxport.cluster.jobwatch import drop_poisoned, watch
from voxport.cluster.redis import SharedRedis
from voxport.config import Settings
from voxport.engine.base import EngineInputError, EngineUnavailable
from voxport.errors import RequestCancelled, VoxportError
from voxport.jobs.backend import JobHooks
from voxport.jobs.runner import OUTAGE_PAUSE_S, error_object
from voxport.jobs.store import FAILED, SUCCEEDED, UNFINISHED, Job
from voxport.jobs.work import SegmentWork
from voxport.protocol import SpeechCreateParams

if TYPE_CHECKING:
    from voxport.cluster.jobs import ResultFiles

log = logging.getLogger("voxport.jobs")

GROUP = "runners"
_ROOM_POLL_S = 0.1  # a replica without room looks again this often (live requests free slots silently)


class RedisJobRunner:
    def __init__(self, settings: Settings, shared: SharedRedis, store: RedisJobStore, work: SegmentWork,
                 hooks: JobHooks, results: ResultFiles):  # fmt: skip
        self.settings, self.shared, self.store, self.work, self.hooks = settings, shared, store, work, hooks
        self.r = shared.client
        self.results = results
        self.stream = shared.key("jobs", "stream")
        self.group = GROUP
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.visibility_s = settings.job_visibility_timeout_s
        self.inflight: dict[bytes, tuple[str, int, asyncio.Event]] = {}  # message -> job, segment, cancel
        self.interrupted = 0  # segments handed back because the engine was unavailable
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._closing = False
        self._grouped = False
        self._cursor = "0-0"

    # -- the interface the service uses -----------------------------------------------------------

    def plan(self, text: str, language: str | None = None, input_format: str = "text") -> list[str]:
        return self.work.plan(text, language, input_format)

    async def prepare(self, params: SpeechCreateParams, text: str, tenant: str = ""):  # noqa: ANN201
        return await self.work.prepare(params, text, tenant)

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._loop(), name="voxport-jobs-redis"),
                       asyncio.create_task(watch(self), name="voxport-jobs-redis-watch")]  # fmt: skip

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Stop this replica's work on a job the store says is cancelled. Always False: the job's work
        lives in Redis, and the caller discards it (other replicas notice it: jobwatch)."""
        for job, _index, switch in self.inflight.values():
            if job == job_id:
                switch.set()
        return False

    async def close(self) -> None:
        """Stop, and hand the messages still being worked on back to the queue for another replica."""
        self._closing = True
        self._wake.set()
        for task in (*self._loops, *self._tasks):
            task.cancel()
        for task in (*self._loops, *self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.inflight:
            with contextlib.suppress(RedisError, OSError):
                await self._hand_back(*self.inflight)
                log.info("handed %d job segment(s) back to the queue", len(self.inflight))

    # -- the queue --------------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped = True

    async def _ack(self, msg_id: bytes) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, msg_id)
            pipe.xdel(self.stream, msg_id)
            await pipe.execute()

    async def _hand_back(self, *msg_ids: bytes) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            for msg_id in msg_ids:
                job, index, _switch = self.inflight[msg_id]
                pipe.xadd(self.stream, {"job": job, "segment": index})
                pipe.xack(self.stream, GROUP, msg_id)
                pipe.xdel(self.stream, msg_id)
            await pipe.execute()

    async def _loop(self) -> None:
        last_reclaim = 0.0
        while not self._closing:
            try:
                if not self._grouped:
                    await self._ensure_group()
                # Only what can start now: what waits here for a slot, another replica could be making.
                room = min(self.work.parallel - len(self.inflight), self.work.free_slots())
                # A quarter of its width at a time, so that replicas waiting together share a burst.
                room = min(room, max(1, self.work.parallel // 4))
                if room <= 0:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), _ROOM_POLL_S)
                    continue
                messages = []
                if time.monotonic() - last_reclaim >= max(0.5, self.visibility_s / 4):
                    last_reclaim = time.monotonic()
                    idle_ms = int(self.visibility_s * 1000)
                    answer = await self.r.xautoclaim(self.stream, GROUP, self.consumer, idle_ms, self._cursor,
                                                     count=room)  # fmt: skip
                    self._cursor = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
                    messages = answer[1]
                    if messages:
                        log.info("reclaimed %d job message(s) from a replica that stopped", len(messages))
                        messages = await drop_poisoned(self, messages)
                if not messages:
                    found = await self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=room,
                                                    block=1000)  # fmt: skip
                    messages = [m for _stream, batch in found or [] for m in batch]
                for msg_id, fields in messages:
                    self._dispatch(msg_id, fields)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream (restarted without persistence)
                    self._grouped = False
                else:
                    log.warning("job queue: %s", exc)
                    await asyncio.sleep(1.0)
            except (RedisError, OSError) as exc:
                self.shared.mark(exc)
                await asyncio.sleep(1.0)

    def _dispatch(self, msg_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if not fields:  # deleted meanwhile (its job finished)
            task = asyncio.create_task(self._ack(msg_id))
        else:
            job, index = fields[b"job"].decode(), int(fields[b"segment"])
            self.inflight[msg_id] = (job, index, asyncio.Event())
            task = asyncio.create_task(self._handle(msg_id), name=f"voxport-job-{job}-{index}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._wake.set()

    # -- one message ------------------------------------------------------------------------------

    async def _handle(self, msg_id: bytes) -> None:
        job_id, index, _cancel = self.inflight[msg_id]
        try:
            if await self._settle(msg_id):
                await self._ack(msg_id)
        except asyncio.CancelledError:
            raise  # shutting down: the message stays in `inflight`, and close() hands it back
        except (RedisError, OSError, VoxportError) as exc:
            # Redis away: the message stays claimed, unrenewed, and is reclaimed once Redis is back.
            if not isinstance(exc, VoxportError):
                self.shared.mark(exc)
            log.warning("job %s segment %d left to be reclaimed: %s", job_id, index, exc)
        self.inflight.pop(msg_id, None)

    async def _settle(self, msg_id: bytes) -> bool:
        """Work on one message; False if it was handed back instead of done."""
        job_id, index, cancel = self.inflight[msg_id]
        try:
            await self._process(job_id, index, cancel)
        except RequestCancelled:
            pass
        except (EngineUnavailable, VoxportError) as exc:
            if isinstance(exc, EngineUnavailable) or exc.kind == "unavailable":
                if isinstance(exc, VoxportError) and exc.code == "job_store_unavailable":
                    raise
                self.interrupted += 1
                log.warning("job %s segment %d handed back: %s", job_id, index, exc)
                await asyncio.sleep(OUTAGE_PAUSE_S)
                await self._hand_back(msg_id)
                return False
            await self.fail(job_id, error_object(exc))
        except EngineInputError as exc:
            await self.fail(job_id, error_object(VoxportError("invalid", str(exc), param=exc.param)))
        except (RedisError, OSError):
            raise
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = VoxportError("internal", f"Internal error: {type(exc).__name__}.", code="internal_error")
            await self.fail(job_id, error_object(error))
        return True

    async def fail(self, job_id: str, error: dict) -> None:
        finished = await self.store.finish(job_id, FAILED, error=error)
        await self.results.discard(job_id)
        if finished is not None:
            await self._notify(finished)

    async def _notify(self, job: Job) -> None:
        """The job's webhook and batch, then a mark that it was done (a replica that reclaims the
        encode message of a finished job without it does it again)."""
        await self.hooks.on_finished(job)
        await self.r.hset(self.shared.key("job", job.id), "notified", 1)

    async def _process(self, job_id: str, index: int, cancel: asyncio.Event) -> None:
        job = await self.store.job(job_id)
        if job is None:
            return
        if job.finished:
            if index < 0 and job.status == SUCCEEDED and not await self._notified(job_id):
                await self._notify(job)
            return
        if index < 0:
            await self._encode(job)
            return
        if await self.r.hexists(self.shared.key("job", job_id, "seg"), str(index)):
            return  # recorded by a replica that died before acknowledging it
        if await self.store.start(job_id) not in UNFINISHED:
            return
        await self.hooks.on_started()
        params = SpeechCreateParams.model_validate(job.request)
        assert job.segments is not None
        audio = await self.work.generate(job_id, index, params, job.segments[index], cancel)
        seconds = len(audio) / self.work.speech.engine.info.sample_rate
        done = await self.store.record_segment(job_id, index, audio.astype("<f4").tobytes(), seconds)
        self.hooks.on_segment()
        if done == -2:
            log.warning("job %s segment %d was generated twice", job_id, index)

    async def _notified(self, job_id: str) -> bool:
        return bool(await self.r.hexists(self.shared.key("job", job_id), "notified"))

    async def _encode(self, job: Job) -> None:
        """Join and encode a job whose segments are all recorded, one segment fetched at a time."""
        total, segments = job.segments_total, self.shared.key("job", job.id, "seg")
        if not job.segments or await self.r.hlen(segments) < total:
            log.warning("job %s: segments missing at encode; left as it is", job.id)
            return
        rate = self.work.speech.engine.info.sample_rate

        async def read(index: int) -> np.ndarray:
            part = await self.r.hget(segments, str(index))
            if part is None:  # cancelled or deleted while encoding
                raise RequestCancelled
            return np.frombuffer(part, dtype="<f4").astype(np.float32)

        params = SpeechCreateParams.model_validate(job.request)
        first = await self.work.prepare(params, job.segments[0])
        path = self.results.path(job.id)
        result = await self.work.encode(path, first, read, total, rate)
        data = await asyncio.to_thread(path.read_bytes)
        finished = await self.store.finish(job.id, SUCCEEDED, result=result, audio=data,
                                           ttl_seconds=self.settings.job_result_ttl_hours * 3600)  # fmt: skip
        if finished is None:  # cancelled while encoding
            await self.results.remove(job.id)
            return
        await self._notify(finished)
