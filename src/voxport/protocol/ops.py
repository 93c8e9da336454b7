"""Models, health, readiness and admin responses."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "voxport"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class CacheCleared(BaseModel):
    removed: int


class Ready(BaseModel):
    ready: bool = True
    # What this replica serves without: "redis" while the shared Redis is unreachable (requests are
    # generated without the shared cache; voice uploads and deletions answer 503).
    degraded: list[str] = []


class HealthCache(BaseModel):
    enabled: bool
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int


class HealthRouting(BaseModel):
    load_score: float
    accepts_requests: bool


class HealthCapacity(BaseModel):
    """What the engine runs at once, and the admission limits sized from it (docs/configuration.md)."""

    engine_batch: int
    max_concurrent: int
    max_queue: int


class HealthJobs(BaseModel):
    queued: int  # speech jobs waiting to run
    running: int


class HealthSkipped(BaseModel):
    """A file start-up could not read and skipped (voxport.skipped): its kind and name, never a path."""

    kind: Literal["voice", "consent", "job", "cache"]
    name: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    model: str
    checkpoint: str
    engine: str | None
    engine_state: Literal["ready", "stalled", "unavailable"]
    attention: str | None
    device: str | None
    ready: bool
    draining: bool = False  # SIGTERM received: still serving, but /ready fails (drain_s)
    requests_in_flight: int
    requests_generating: int
    requests_queued: int
    requests_cancelled: int
    capacity: HealthCapacity
    cache: HealthCache
    routing: HealthRouting
    rss_bytes: int | None
    gpu_memory_bytes: int | None  # this process and its children (nano-vllm's worker), per NVML
    jobs: HealthJobs | None = None
    redis: Literal["ok", "unreachable"] | None = None  # None: no shared Redis configured
    degraded: list[str] = []  # as /ready's
    skipped: list[HealthSkipped] = []  # unreadable files start-up skipped; everything else serves
