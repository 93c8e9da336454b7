"""Job and batch request bodies, and the objects the API answers with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxport.jobs.store import Batch, Job
from voxport.protocol import SpeechCreateParams

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
    for key, item in value.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise ValueError(f"keys are 1 to {MAX_METADATA_KEY} characters")
        if len(item) > MAX_METADATA_VALUE:
            raise ValueError(f"values are at most {MAX_METADATA_VALUE} characters")
    return value


def stored_speech_body(speech: BaseModel, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """A speech request's body as a job keeps it: set fields only, without `exclude` and without the
    streaming fields (streaming does not apply to a job)."""
    return speech.model_dump(exclude={*exclude, "stream", "stream_format"}, exclude_none=True, mode="json")


class SpeechJobCreateParams(SpeechCreateParams):
    """POST /v1/audio/speech/jobs: every field of /v1/audio/speech, plus where to report and a label."""

    webhook_url: str | None = Field(None, max_length=2048)
    metadata: dict[str, str] | None = None

    _metadata = field_validator("metadata")(_check_metadata)

    def speech_body(self) -> dict[str, Any]:
        """The /v1/audio/speech part, as stored with the job."""
        return stored_speech_body(self, {"webhook_url", "metadata"})


class SpeechBatchCreateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(min_length=1)
    webhook_url: str | None = Field(None, max_length=2048)
    metadata: dict[str, str] | None = None

    _metadata = field_validator("metadata")(_check_metadata)


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def job_object(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "speech.job",
        "status": job.status,
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "expires_at": _ts(job.expires_at),
        "progress": {
            "segments_done": job.segments_done,
            "segments_total": job.segments_total,
            "audio_seconds": round(job.audio_seconds, 3),
        },
        "error": job.error,
        # The segment timings stay in the store; GET .../captions serves them.
        "result": {k: v for k, v in job.result.items() if k != "timings"} if job.result else job.result,
        "batch_id": job.batch_id,
        "metadata": job.metadata or {},
    }


def batch_object(batch: Batch) -> dict[str, Any]:
    counts = {status: batch.counts.get(status, 0) for status in
              ("queued", "running", "succeeded", "failed", "cancelled")}  # fmt: skip
    return {
        "id": batch.id,
        "object": "speech.batch",
        "status": "completed" if batch.completed_at is not None else "in_progress",
        "created_at": _ts(batch.created_at),
        "completed_at": _ts(batch.completed_at),
        "request_counts": {"total": len(batch.job_ids), **counts},
        "job_ids": list(batch.job_ids),
        "metadata": batch.metadata or {},
    }
