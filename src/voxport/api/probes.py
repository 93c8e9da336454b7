"""`/health`, `HEAD /health` and `/ready`: what a gateway polls constantly, so each costs next to nothing.

The probes that cost something (process RSS, GPU memory through NVML) are sampled in the background at
most once a second (`metrics.ResourceSampler`); `/health` reads the last sample and the live counters.
Its body is rendered again only when one of the values in it has changed. `HEAD /health` renders
nothing (200, with the headers of the last body rendered); `/ready` is one attribute read. The request
layer answers these without entering the router (api/middleware.py); the router's routes
(api/routes/ops.py) call the same methods, so the answers and the OpenAPI document agree.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from voxport import __version__
from voxport.api.errors import envelope, headers_of, status_of
from voxport.api.middleware import Answer, Probe
from voxport.errors import unavailable
from voxport.jobs.service import JobService
from voxport.metrics import ResourceSampler
from voxport.protocol import Health, HealthCache, HealthCapacity, HealthJobs, HealthRouting, HealthSkipped
from voxport.speech import SpeechService

if TYPE_CHECKING:
    from voxport.cluster.redis import SharedRedis

_JSON = [(b"content-type", b"application/json")]
_READY = b'{"ready":true}'  # a single node: `degraded` left out (its default, empty)


class Probes:
    def __init__(self, speech: SpeechService, jobs: JobService, checkpoint: str, sampler: ResourceSampler,
                 redis: SharedRedis | None = None):  # fmt: skip
        self.speech = speech
        self.redis = redis
        self.jobs = jobs
        self.checkpoint = checkpoint
        self.sampler = sampler
        self._key: tuple[Any, ...] | None = None
        self._body = b""
        self._headers = _JSON
        not_ready = unavailable("The speech engine is not ready.", code="not_ready", retry_after=None)
        body = json.dumps(envelope(not_ready), separators=(",", ":")).encode()
        extra = [(k.lower().encode(), v.encode()) for k, v in headers_of(not_ready).items()]
        self._not_ready: Answer = (status_of(not_ready), [*_sized(body), *extra], body)
        # Stopping (SIGTERM with --drain-s): still serving, but a load balancer must send no more.
        draining = unavailable("The server is draining before it stops.", code="draining", retry_after=None)
        body = json.dumps(envelope(draining), separators=(",", ":")).encode()
        extra = [(k.lower().encode(), v.encode()) for k, v in headers_of(draining).items()]
        self._draining: Answer = (status_of(draining), [*_sized(body), *extra], body)

    def routes(self) -> dict[tuple[str, str], Probe]:
        return {("GET", "/health"): self.get_health, ("HEAD", "/health"): self.head_health,
                ("GET", "/ready"): self.ready}  # fmt: skip

    def _engine(self) -> tuple[str | None, str | None, str | None, str]:
        speech = self.speech
        try:
            info = speech.engine.info
            name, device, attention = info.name, info.device, info.attention
        except Exception:  # not loaded
            name = device = attention = None
        state = "stalled" if speech.watch.stalled else "ready" if speech.engine.ready else "unavailable"
        return name, device, attention, state

    def health_body(self) -> bytes:
        speech, sampler = self.speech, self.sampler
        cache, admission, tickets = speech.cache, speech.admission, speech.tickets
        queue = self.jobs.health()
        key = (
            self._engine(), speech.accepts_requests, tickets.in_flight + sampler.peer_in_flight,
            admission.generating, admission.queued, tickets.cancelled_total + sampler.peer_cancelled,
            cache.enabled, cache.entries, cache.bytes,
            cache.stats.hits, cache.stats.misses, cache.stats.evictions, admission.load_score,
            sampler.rss_bytes, sampler.gpu_memory_bytes, queue["queued"], queue["running"],
            self._redis_state(), speech.draining, len(self._skipped()),
        )  # fmt: skip
        if key != self._key:
            self._body = self._render(key).model_dump_json().encode()
            self._headers = _sized(self._body)
            self._key = key
        return self._body

    def _render(self, key: tuple[Any, ...]) -> Health:
        (engine, device, attention, state), ready = key[0], key[1]
        admission, cache = self.speech.admission, self.speech.cache
        capacity = HealthCapacity(
            engine_batch=admission.engine_batch, max_concurrent=admission.max_concurrent,
            max_queue=admission.max_queue,
        )  # fmt: skip
        return Health(
            status="ok" if state == "ready" else "unavailable", version=__version__,
            model=self.speech.settings.served_model_id, checkpoint=self.checkpoint, engine=engine,
            engine_state=state, attention=attention, device=device, ready=ready,
            requests_in_flight=key[2], requests_generating=key[3], requests_queued=key[4],
            requests_cancelled=key[5],
            capacity=capacity,
            cache=HealthCache(enabled=cache.enabled, entries=key[7], bytes=key[8], hits=key[9],
                              misses=key[10], evictions=key[11]),
            routing=HealthRouting(load_score=key[12], accepts_requests=ready),
            rss_bytes=key[13], gpu_memory_bytes=key[14], jobs=HealthJobs(queued=key[15], running=key[16]),
            redis=key[17], degraded=self.degraded(), draining=key[18],
            skipped=[HealthSkipped(kind=kind, name=name) for kind, name in self._skipped()],
        )  # fmt: skip

    def _skipped(self) -> list[tuple[str, str]]:
        """Files start-up skipped (voxport.skipped): library voices, consents, job rows, cache entries."""
        voices, found = self.speech.voices, []
        for holder in (voices, self.speech.cache, self.jobs.store):
            skipped = getattr(holder, "skipped", None)  # the Redis cache and job store keep no files
            found += skipped.items if skipped is not None else []
        return found

    def _redis_state(self) -> str | None:
        return None if self.redis is None else "ok" if self.redis.available else "unreachable"

    def degraded(self) -> list[str]:
        """What this replica serves without right now (the shared Redis, when it is unreachable)."""
        return ["redis"] if self.redis is not None and not self.redis.available else []

    async def get_health(self) -> Answer:
        await self.sampler.sample_peers()  # with workers: the others' requests in flight and cancelled
        body = self.health_body()
        return 200, self._headers, body

    async def head_health(self) -> Answer:
        if self._key is None:
            self.health_body()
        return 200, self._headers, b""  # the length of the last body rendered: nothing is rendered here

    async def ready(self) -> Answer:
        """200 while the engine can serve, even with Redis away (requests then go without the shared
        cache): a load balancer keeps the replica in rotation, and `degraded` says what is missing."""
        if self.speech.draining:
            return self._draining
        if not self.speech.accepts_requests:
            return self._not_ready
        if self.redis is not None:  # a replica sharing state says what it serves without, if anything
            body = json.dumps({"ready": True, "degraded": self.degraded()}, separators=(",", ":")).encode()
            return 200, _sized(body), body
        return 200, _READY_HEADERS, _READY


def _sized(body: bytes) -> list[tuple[bytes, bytes]]:
    return [*_JSON, (b"content-length", str(len(body)).encode())]


_READY_HEADERS = _sized(_READY)
