"""The embedded job runner (SQLite store, segment files): queued jobs through the same speech service as
live requests, at lower priority (`work.SegmentWork`, `priority.JobPriority`: a live request pre-empts
a job segment on an engine it needs), one segment at a time, yielding between segments.

Durability: each finished segment's float32 audio is written atomically before its progress is recorded;
a job the last process left running resumes at its first missing segment. The final audio is joined from
the segment files with the live path's cross-fade (`CrossFader`) and encoded once, so an interrupted and
an uninterrupted job with a fixed seed give the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from voxport.config import Settings
from voxport.engine.base import EngineInputError, EngineUnavailable
from voxport.errors import RequestCancelled, VoxportError
from voxport.faultlog import OncePerCause
from voxport.jobs.segments import SegmentFiles
from voxport.jobs.store import FAILED, SUCCEEDED, Job, JobStore
from voxport.jobs.work import SegmentReader, SegmentWork
from voxport.protocol import SpeechCreateParams
from voxport.speech import SpeechService
from voxport.speech.prepare import PreparedSpeech

log = logging.getLogger("voxport.jobs")

EXPIRY_SWEEP_S = 60.0
OUTAGE_PAUSE_S = 1.0  # a job the engine failed under waits this long before it is taken up again


def error_object(error: VoxportError) -> dict[str, Any]:
    """OpenAI's error object for a failed job (the API's envelope, without the HTTP status)."""
    kind = "server_error" if error.kind in ("internal", "unavailable", "timeout") else "invalid_request_error"
    return {"message": error.message, "type": kind, "param": error.param, "code": error.code}


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: SegmentFiles,
        speech: SpeechService,
        on_finished: Callable[[Job], Awaitable[None]],
        on_segment: Callable[[], None] = lambda: None,
        on_started: Callable[[], Awaitable[object]] | None = None,
        on_preempted: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.store = store
        self.files = files
        self.speech = speech
        self.work = SegmentWork(settings, speech, on_preempted)
        self.on_finished = on_finished
        self.on_segment = on_segment
        self.on_started = on_started
        self.running: dict[str, asyncio.Event] = {}  # job id -> its cancel switch
        self.interrupted = 0  # segments abandoned because the engine was unavailable
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._closing = False
        self._errors = OncePerCause(log)

    @property
    def parallel(self) -> int:
        """Jobs generating at once."""
        return self.work.parallel

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="voxport-jobs")
        self._sweeper = asyncio.create_task(self._sweep(), name="voxport-jobs-expiry")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop: jobs being run stay `running` in the store and resume at the next start."""
        self._closing = True  # see WebhookDispatcher.close: a cancel alone can be swallowed by wait_for
        self._wake.set()
        for task in (self._loop_task, self._sweeper, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._loop_task, self._sweeper, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def cancel(self, job_id: str) -> bool:
        """Abandon a running job's work (the store already says cancelled); False if it is not running."""
        switch = self.running.get(job_id)
        if switch is None:
            return False
        switch.set()
        return True

    async def _loop(self) -> None:
        while not self._closing:
            self._wake.clear()
            room = self.parallel - len(self.running)
            try:
                queued = await self.store.next_queued(limit=room + len(self.running)) if room > 0 else []
            except Exception as exc:  # the loop outlives it; the next pass (at most 5 s on) tries again
                self._errors.report("reading queued jobs", exc)
                queued = []
            for job in queued:
                if room <= 0:
                    break
                if job.id in self.running:
                    continue
                self.running[job.id] = asyncio.Event()
                task = asyncio.create_task(self._run(job), name=f"voxport-job-{job.id}")
                self._tasks.add(task)
                task.add_done_callback(self._done)
                room -= 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _sweep(self) -> None:
        while True:
            try:
                for job_id in await self.store.expired():
                    await asyncio.to_thread(self.files.remove, job_id)
            except Exception as exc:
                self._errors.report("job result expiry", exc)
            # A short TTL is honoured closely: sweep at least twice per TTL.
            await asyncio.sleep(min(EXPIRY_SWEEP_S, max(0.1, self.settings.job_result_ttl_hours * 1800)))

    # -- one job ----------------------------------------------------------------------------------

    def plan(self, text: str, language: str | None = None, input_format: str = "text") -> list[str]:
        return self.work.plan(text, language, input_format)

    async def prepare(self, params: SpeechCreateParams, text: str, tenant: str = "") -> PreparedSpeech:
        return await self.work.prepare(params, text, tenant)

    async def _run(self, job: Job) -> None:
        cancel = self.running[job.id]
        try:
            await self._execute(job, cancel)
        except RequestCancelled:
            await asyncio.to_thread(self.files.remove, job.id)
        except asyncio.CancelledError:
            raise  # shutting down: the job resumes at the next start
        except (EngineUnavailable, VoxportError) as exc:
            if isinstance(exc, EngineUnavailable) or exc.kind == "unavailable":
                # An outage, not the job's fault: it stays running and resumes from its segment files
                # once the engine answers again (the loop takes it up; headroom waits for readiness).
                self.interrupted += 1
                log.warning("job %s paused: %s", job.id, exc)
                await asyncio.sleep(OUTAGE_PAUSE_S)
                return
            await self._fail(job, error_object(exc))
        except EngineInputError as exc:
            await self._fail(job, error_object(VoxportError("invalid", str(exc), param=exc.param)))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            error = VoxportError("internal", f"Internal error: {type(exc).__name__}.", code="internal_error")
            await self._fail(job, error_object(error))
        finally:
            self.running.pop(job.id, None)

    async def _fail(self, job: Job, error: dict[str, Any]) -> None:
        finished = await self.store.finish(job.id, FAILED, error=error)
        await asyncio.to_thread(self.files.remove, job.id)
        if finished is not None:
            await self.on_finished(finished)

    async def _execute(self, job: Job, cancel: asyncio.Event) -> None:
        params = SpeechCreateParams.model_validate(job.request)
        plan = job.segments or await asyncio.to_thread(self.plan, params.input, params.language,
                                                        params.input_format)  # fmt: skip
        rate = self.speech.engine.info.sample_rate
        done, samples = await asyncio.to_thread(self.files.done, job.id, len(plan))
        if not await self.store.start(job.id, plan, done, samples / rate):
            raise RequestCancelled
        if self.on_started is not None:
            await self.on_started()
        if done:
            log.info("job %s resumes at segment %d of %d", job.id, done + 1, len(plan))
        for index in range(done, len(plan)):
            if cancel.is_set():
                raise RequestCancelled
            audio = await self.work.generate(job.id, index, params, plan[index], cancel)
            await asyncio.to_thread(self.files.write_segment, job.id, index, audio)
            samples += len(audio)
            await self.store.segment_done(job.id, index + 1, samples / rate)
            self.on_segment()
            await asyncio.sleep(0)  # between segments, whoever else is ready runs first
        if cancel.is_set():
            raise RequestCancelled
        first = await self.prepare(params, plan[0])
        result = await self.work.encode(self.files.audio_path(job.id), first, self._reader(job.id),
                                        len(plan), rate)  # fmt: skip
        finished = await self.store.finish(job.id, SUCCEEDED, result=result,
                                           ttl_seconds=self.settings.job_result_ttl_hours * 3600)  # fmt: skip
        if finished is None:  # cancelled while encoding
            raise RequestCancelled
        await asyncio.to_thread(self.files.drop_segments, job.id)
        await self.on_finished(finished)

    def _reader(self, job_id: str) -> SegmentReader:
        async def read(index: int) -> np.ndarray:
            return await asyncio.to_thread(self.files.read_segment, job_id, index)

        return read
