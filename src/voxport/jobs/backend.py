"""Where jobs live and what runs them: the small interface between the jobs service and its backend.

Two backends implement it: the embedded default (`embedded_backend`: SQLite and segment files under the
data directory, `store.JobStore` and `runner.JobRunner`), and the Redis one shared by replicas
(`voxport.cluster.jobs`, built by the composition root only when `--redis-url` is set)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from voxport.config import Settings
from voxport.jobs.runner import JobRunner
from voxport.jobs.segments import SegmentFiles
from voxport.jobs.store import Batch, Delivery, Job, JobStore
from voxport.jobs.webhooks import load_secret
from voxport.protocol import SpeechCreateParams
from voxport.speech import SpeechService
from voxport.speech.prepare import PreparedSpeech


class JobStoreAPI(Protocol):
    """What the service, the runner and the webhook dispatcher ask of a job store (see store.JobStore)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, job_id: str, scope: str | None = None) -> Job | None: ...
    async def create_job(self, request: dict[str, Any], **kw: Any) -> tuple[Job, bool]: ...
    async def create_batch(self, requests: list[dict[str, Any]], **kw: Any) -> tuple[Batch, bool]: ...
    async def get_batch(self, batch_id: str, scope: str | None = None) -> Batch | None: ...
    async def complete_batch(self, batch_id: str) -> Batch | None: ...
    async def list_jobs(self, scope: str | None, limit: int = 20, after: str | None = None
                        ) -> tuple[list[Job], bool]: ...  # fmt: skip
    async def count_by_status(self) -> dict[str, int]: ...
    async def finish(self, job_id: str, status: str, **kw: Any) -> Job | None: ...
    async def delete(self, job_id: str) -> None: ...
    async def enqueue_delivery(self, subject: str, event: str, url: str, payload: str) -> Delivery: ...
    async def due_deliveries(self, now: float | None = None) -> tuple[list[Delivery], float | None]: ...
    async def record_attempt(self, delivery_id: str, *, status: str, next_attempt_at: float,
                             http_status: int | None, error: str | None) -> None: ...  # fmt: skip


class JobRunnerAPI(Protocol):
    interrupted: int

    def start(self) -> None: ...
    async def close(self) -> None: ...
    def wake(self) -> None: ...
    def cancel(self, job_id: str) -> bool: ...
    def plan(self, text: str, language: str | None = None, input_format: str = "text") -> list[str]: ...
    async def prepare(self, params: SpeechCreateParams, text: str, tenant: str = "") -> PreparedSpeech: ...


@dataclass
class JobHooks:
    """The service's callbacks into a runner."""

    on_finished: Callable[[Job], Awaitable[None]]
    on_segment: Callable[[], None]
    on_started: Callable[[], Awaitable[object]]
    on_preempted: Callable[[], None] = lambda: None


@dataclass
class JobBackend:
    store: JobStoreAPI
    runner: JobRunnerAPI
    audio_file: Callable[[str], Awaitable[Path | None]]  # a succeeded job's audio as a local file, if kept
    discard: Callable[[str], Awaitable[None]]  # drop a job's work and audio (cancelled, deleted)
    secret: Callable[[], Awaitable[str]]  # the webhook signing secret


BackendFactory = Callable[[Settings, SpeechService, JobHooks], JobBackend]


def embedded_backend(settings: Settings, speech: SpeechService, hooks: JobHooks) -> JobBackend:
    """The default: one SQLite file and the segment files under <data-dir>/jobs/, no server."""
    root = Path(settings.data_dir) / "jobs"
    store, files = JobStore(root), SegmentFiles(root)
    runner = JobRunner(settings, store, files, speech, hooks.on_finished,
                       on_segment=hooks.on_segment, on_started=hooks.on_started,
                       on_preempted=hooks.on_preempted)  # fmt: skip

    async def audio_file(job_id: str) -> Path | None:
        path = files.audio_path(job_id)
        return path if await asyncio.to_thread(path.exists) else None

    async def discard(job_id: str) -> None:
        await asyncio.to_thread(files.remove, job_id)

    async def secret() -> str:
        return await asyncio.to_thread(load_secret, settings.webhook_secret, settings.data_dir)

    return JobBackend(store, runner, audio_file, discard, secret)
