"""What the job store keeps (docs/jobs.md): jobs, batches and webhook deliveries as records, their
statuses, and how a record is read from a SQLite row. The Redis store (cluster/jobstore.py) keeps the same
records."""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from voxport.tenants import tenant_id

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
UNFINISHED = (QUEUED, RUNNING)


class QuotaExceeded(Exception):
    def __init__(self, message: str, per_key: bool):
        super().__init__(message)
        self.per_key = per_key


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def key_scope(api_key: str | None) -> str:
    """Who owns a job: its tenant, a hash of the API key that created it ('' when the server has no
    keys). Keys themselves are never stored."""
    return tenant_id(api_key)


@dataclass
class Job:
    id: str
    scope: str
    status: str
    created_at: float
    request: dict[str, Any]
    seq: int = 0
    idempotency_key: str | None = None
    batch_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    segments: list[str] | None = None  # the plan, fixed when the job first starts
    segments_done: int = 0
    segments_total: int = 0
    audio_seconds: float = 0.0
    segments_generated: int = 0  # segments the engine produced for this job, across restarts
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class Batch:
    id: str
    scope: str
    created_at: float
    seq: int = 0
    idempotency_key: str | None = None
    completed_at: float | None = None
    metadata: dict[str, str] | None = None
    webhook_url: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # jobs by status
    job_ids: list[str] = field(default_factory=list)


@dataclass
class Delivery:
    id: str
    subject: str
    event: str
    url: str
    payload: str
    status: str  # pending | delivered | failed
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    seq: int = 0


JSON_FIELDS = {"request", "metadata", "segments", "error", "result"}


def job_from_row(row: sqlite3.Row) -> Job:
    data = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a mapping
    for name in JSON_FIELDS:
        if data.get(name) is not None:
            data[name] = json.loads(data[name])
    return Job(**data)


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))
