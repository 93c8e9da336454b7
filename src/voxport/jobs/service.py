"""The jobs service: what the /v1/audio/speech/jobs and /batches routes call. HTTP-free: it raises
`VoxportError`s, which the API layer turns into status codes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from voxport.config import Settings
from voxport.errors import Kind, VoxportError, from_validation
from voxport.jobs import captions
from voxport.jobs.backend import BackendFactory, JobHooks, embedded_backend
from voxport.jobs.metrics import JobMetrics
from voxport.jobs.protocol import (
    SpeechBatchCreateParams,
    SpeechJobCreateParams,
    batch_object,
    job_object,
    stored_speech_body,
)
from voxport.jobs.store import (
    CANCELLED,
    FINISHED,
    QUEUED,
    RUNNING,
    Job,
    QuotaExceeded,
)
from voxport.jobs.webhooks import (
    Allowlist,
    WebhookDispatcher,
    WebhookSender,
    WebhookURLError,
    check_url,
)
from voxport.metrics import Metrics
from voxport.protocol import SpeechCreateParams
from voxport.speech import SpeechService, script

log = logging.getLogger("voxport.jobs")
T = TypeVar("T")


def _error(kind: Kind, message: str, param: str | None = None, code: str | None = None) -> VoxportError:
    return VoxportError(kind, message, param=param, code=code)


class JobService:
    def __init__(self, settings: Settings, speech: SpeechService, metrics: Metrics,
                 backend: BackendFactory | None = None, runs: bool = True):  # fmt: skip
        """`backend`: where jobs live and what runs them; the embedded SQLite one unless given. `runs`:
        whether this process runs jobs and delivers webhooks (with --workers, one worker does)."""
        self.settings, self.speech = settings, speech
        self.allow = Allowlist.parse(settings.webhook_allow_hosts)
        self.metrics = JobMetrics(metrics)
        hooks = JobHooks(self._finished, self.metrics.segments.inc, self.refresh_counts,
                         self.metrics.preempted.inc)  # fmt: skip
        self.backend = (backend or embedded_backend)(settings, speech, hooks)
        self.store = self.backend.store
        self.runner = self.backend.runner
        self.dispatcher: WebhookDispatcher | None = None
        self.counts: dict[str, int] = {}
        self.runs = runs
        self.elsewhere: Callable[[str], Awaitable[bool]] | None = None  # stops a job another worker runs

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        secret = await self.backend.secret()
        sender = WebhookSender(secret, self.allow, self.settings.webhook_timeout_s)
        outcome = self.metrics.webhooks.labels
        self.dispatcher = WebhookDispatcher(self.store, sender, self.settings.webhook_retry_s,
                                            on_outcome=lambda o: outcome(o).inc(),
                                            max_parallel=self.settings.webhook_parallel)  # fmt: skip
        await self.refresh_counts()
        if self.runs:
            self.dispatcher.start()
            self.runner.start()

    async def close(self) -> None:
        await self.runner.close()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        await self.store.close()

    async def refresh_counts(self) -> dict[str, int]:
        self.counts = await self.store.count_by_status()
        for status in (QUEUED, RUNNING, "succeeded", "failed", CANCELLED):
            self.metrics.jobs.labels(status).set(self.counts.get(status, 0))
        self.metrics.queue_depth.set(self.counts.get(QUEUED, 0))
        return self.counts

    def health(self) -> dict[str, int]:
        return {"queued": self.counts.get(QUEUED, 0), "running": self.counts.get(RUNNING, 0)}

    # -- submission -------------------------------------------------------------------------------

    def _check_webhook(self, url: str | None, param: str = "webhook_url") -> None:
        if url is None:
            return
        try:
            check_url(url, self.allow)
        except WebhookURLError as exc:
            raise _error("invalid", str(exc), param, "invalid_webhook_url") from None

    async def _validate_speech(self, params: SpeechCreateParams, limit: int, scope: str,
                               prefix: str = "") -> None:  # fmt: skip
        """What the speech service would refuse (model, voice, format, rates), refused now, with the
        field named; and the job's own input limit. A job speaks `input` (dialogues are live-only for
        now); its timings are its captions (GET .../captions), not `timestamps`."""
        for field, why in (("dialogue", "a job speaks 'input'"), ("timestamps", "use GET "
                           "/v1/audio/speech/jobs/{id}/captions")):  # fmt: skip
            if getattr(params, field):
                raise _error("invalid", f"'{field}' does not apply to a job: {why}.", f"{prefix}{field}")
        if params.input is None:
            raise _error("invalid", "Missing required parameter: 'input'.", f"{prefix}input",
                         "missing_required_parameter")  # fmt: skip
        if not params.input.strip():
            raise _error("invalid", "'input' must contain text to speak.", f"{prefix}input")
        if len(params.input) > limit:
            raise _error("invalid", f"'input' is {len(params.input)} characters; the maximum is {limit}.",
                           f"{prefix}input", "string_too_long")  # fmt: skip
        try:
            # Planning is linear in the text (up to max_job_chars), but off the event loop all the same.
            texts = await asyncio.to_thread(self.runner.plan, params.input, params.language,
                                            params.input_format)  # fmt: skip
            await self.runner.prepare(params, texts[0], scope)
            parsed = script.parse(params)
            if parsed is not None:  # every SSML block's <voice>, not only the first block's
                script.voices(self.speech.voices, parsed, scope)
        except VoxportError as exc:
            if not exc.client_fault or not prefix:
                raise
            param = f"{prefix}{exc.param}" if exc.param else None  # which request of the batch
            raise VoxportError(exc.kind, exc.message, param=param, code=exc.code) from None

    def _quota_error(self, exc: QuotaExceeded) -> VoxportError:
        return VoxportError("busy", str(exc), code="job_quota_exceeded", retry_after=60)

    async def create(
        self, params: SpeechJobCreateParams, *, scope: str, idempotency_key: str | None
    ) -> dict[str, Any]:
        self._check_webhook(params.webhook_url)
        await self._validate_speech(params, self.settings.max_job_chars, scope)
        job = await self._enqueue(self.store.create_job, params.speech_body(), params, scope, idempotency_key)
        return job_object(job)

    async def _enqueue(self, create: Callable[..., Awaitable[tuple[T, bool]]], what: Any,
                       params: SpeechJobCreateParams | SpeechBatchCreateParams, scope: str,
                       idempotency_key: str | None) -> T:  # fmt: skip
        """A job or a batch into the store, within the quotas; the runner woken if it is new."""
        try:
            made, created = await create(
                what, scope=scope, metadata=params.metadata, webhook_url=params.webhook_url,
                idempotency_key=idempotency_key, max_queued=self.settings.max_queued_jobs,
                max_queued_per_key=self.settings.max_queued_jobs_per_key,
            )  # fmt: skip
        except QuotaExceeded as exc:
            raise self._quota_error(exc) from None
        if created:
            await self.refresh_counts()
            self.runner.wake()
        else:
            await self._same_body(made, what, params)
        return made

    async def _same_body(self, made: Any, what: Any, params: SpeechJobCreateParams | SpeechBatchCreateParams
                         ) -> None:  # fmt: skip
        """An Idempotency-Key sent again must come with the body it was first sent with (as Stripe's)."""
        if isinstance(made, Job):
            kept: Any = made.request
        else:  # a batch: its jobs' requests (unless one was deleted since)
            jobs = [await self.store.get(job_id) for job_id in made.job_ids]
            kept = [job.request for job in jobs] if all(jobs) else json.loads(json.dumps(what))
        if (kept, made.metadata, made.webhook_url) != (json.loads(json.dumps(what)), params.metadata,
                                                       params.webhook_url):  # fmt: skip
            message = "This Idempotency-Key was first sent with another request body; send a new key."
            raise _error("conflict", message, "Idempotency-Key", "idempotency_key_reused")

    async def create_batch(
        self, params: SpeechBatchCreateParams, *, scope: str, idempotency_key: str | None
    ) -> dict[str, Any]:
        if len(params.requests) > self.settings.max_batch_requests:
            most = self.settings.max_batch_requests
            raise _error("invalid", f"A batch holds at most {most} requests; this one has "
                           f"{len(params.requests)}.", "requests", "too_many_requests")  # fmt: skip
        self._check_webhook(params.webhook_url)
        bodies = []
        for index, raw in enumerate(params.requests):
            prefix = f"requests[{index}]."
            try:  # as strictly as POST /v1/audio/speech and /jobs validate their bodies
                speech = SpeechCreateParams.model_validate(raw, strict=True)
            except ValidationError as exc:
                raise from_validation(exc.errors(), prefix) from None
            await self._validate_speech(speech, self.settings.max_input_chars, scope, prefix)
            bodies.append(stored_speech_body(speech))
        batch = await self._enqueue(self.store.create_batch, bodies, params, scope, idempotency_key)
        return batch_object(batch)

    # -- reading ----------------------------------------------------------------------------------

    async def _job(self, job_id: str, scope: str) -> Job:
        job = await self.store.get(job_id, scope)
        if job is None:
            raise _error("not_found", f"No job '{job_id}'.", "job_id", "job_not_found")
        return job

    async def get(self, job_id: str, scope: str) -> dict[str, Any]:
        return job_object(await self._job(job_id, scope))

    async def list(self, scope: str, limit: int, after: str | None) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise _error("invalid", "'limit' must be between 1 and 100.", "limit")
        try:
            jobs, more = await self.store.list_jobs(scope, limit, after)
        except KeyError:
            raise _error("invalid", f"'after' names no job: '{after}'.", "after") from None
        data = [job_object(j) for j in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}  # fmt: skip

    async def content(self, job_id: str, scope: str) -> tuple[Path, str]:
        """(path of the audio, its content type)."""
        job = await self._job(job_id, scope)
        if job.status != "succeeded":
            raise _error("conflict", f"Job '{job_id}' is {job.status}; its audio exists once it has "
                           "succeeded.", "job_id", "job_not_succeeded")  # fmt: skip
        path = None if job.result is None else await self.backend.audio_file(job_id)
        if path is None:
            raise _error("not_found", f"The audio of job '{job_id}' has expired or was deleted.",
                           "job_id", "job_content_expired")  # fmt: skip
        return path, job.result["content_type"]

    async def captions(self, job_id: str, scope: str, fmt: str) -> tuple[str, str]:
        """(the captions of a succeeded job in `fmt`, their content type)."""
        if fmt not in captions.CONTENT_TYPES:
            raise _error("invalid", f"'format' must be 'vtt' or 'srt', not '{fmt}'.", "format")
        job = await self._job(job_id, scope)
        await self.content(job_id, scope)  # it has succeeded, and its audio is still there
        assert job.result is not None
        if "timings" not in job.result:
            raise _error("not_found", f"Job '{job_id}' finished before this server kept segment timings.",
                         "job_id", "job_captions_unavailable")  # fmt: skip
        text = await asyncio.to_thread(captions.write, fmt, job.segments, job.result["timings"])
        return text, captions.CONTENT_TYPES[fmt]

    async def get_batch(self, batch_id: str, scope: str) -> dict[str, Any]:
        batch = await self.store.get_batch(batch_id, scope)
        if batch is None:
            raise _error("not_found", f"No batch '{batch_id}'.", "batch_id", "batch_not_found")
        return batch_object(batch)

    # -- changes ----------------------------------------------------------------------------------

    async def cancel(self, job_id: str, scope: str) -> dict[str, Any]:
        job = await self._job(job_id, scope)
        if job.status == CANCELLED:
            return job_object(job)
        if job.status in FINISHED:
            raise _error("conflict", f"Job '{job_id}' has already {job.status}.", "job_id", "job_finished")
        finished = await self.store.finish(job_id, CANCELLED)
        if finished is None:  # it finished meanwhile
            return job_object(await self._job(job_id, scope))
        if not self.runner.cancel(job_id) and not (self.elsewhere and await self.elsewhere(job_id)):
            # Not running (here, or in the worker that runs jobs): nothing will clean its directory up but us
            await self.backend.discard(job_id)
        await self._finished(finished)
        return job_object(finished)

    async def delete(self, job_id: str, scope: str) -> dict[str, Any]:
        job = await self._job(job_id, scope)
        if job.status not in FINISHED:
            await self.cancel(job_id, scope)
        await self.store.delete(job_id)
        await self.backend.discard(job_id)
        await self.refresh_counts()
        return {"id": job_id, "object": "speech.job.deleted", "deleted": True}

    async def _finished(self, job: Job) -> None:
        """A job reached a final status: its webhook, its batch's completion, the counts."""
        await self.refresh_counts()
        assert self.dispatcher is not None
        if job.webhook_url:
            await self.dispatcher.enqueue(
                job.id, f"speech.job.{job.status}", job.webhook_url, job_object(job)
            )
        if job.batch_id:
            batch = await self.store.complete_batch(job.batch_id)
            if batch is not None and batch.webhook_url:
                await self.dispatcher.enqueue(batch.id, "speech.batch.completed", batch.webhook_url,
                                              batch_object(batch))  # fmt: skip
