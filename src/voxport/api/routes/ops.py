"""Operations: /health, /ready, /metrics, and the admin routes (reload voices.json, clear the cache)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voxport import __version__
from voxport.api.auth import require_admin, require_metrics_key
from voxport.api.deps import CacheDep, MetricsDep, SpeechDep, VoicesDep
from voxport.api.openapi import errors
from voxport.errors import unavailable
from voxport.metrics import gpu_memory_bytes, process_rss_bytes
from voxport.protocol import (
    CacheCleared,
    Health,
    HealthCache,
    HealthCapacity,
    HealthJobs,
    HealthRouting,
    Ready,
    VoicesReloaded,
)
from voxport.speech import SpeechService

router = APIRouter(tags=["ops"])  # open: probes and load balancers call these without a key
admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=errors(401, 403),
                  tags=["admin"])  # fmt: skip


def _engine_state(speech: SpeechService) -> str:
    if speech.watch.stalled:
        return "stalled"
    return "ready" if speech.engine.ready else "unavailable"


def _engine_info(speech: SpeechService) -> tuple[str | None, str | None, str | None]:
    try:
        info = speech.engine.info
    except Exception:  # not loaded
        return None, None, None
    return info.name, info.device, info.attention


async def health_report(
    speech: SpeechService, checkpoint: str, job_queue: HealthJobs | None = None
) -> Health:
    (engine, device, attention), state = _engine_info(speech), _engine_state(speech)
    cache, admission, jobs = speech.cache, speech.admission, speech.jobs
    gpu = await asyncio.to_thread(gpu_memory_bytes) if device and device.startswith("cuda") else None
    return Health(
        status="ok" if state == "ready" else "unavailable", version=__version__,
        model=speech.settings.served_model_id, checkpoint=checkpoint, engine=engine, engine_state=state,
        attention=attention, device=device, ready=speech.accepts_requests, draining=speech.draining,
        requests_in_flight=jobs.in_flight, requests_generating=admission.generating,
        requests_queued=admission.queued, requests_cancelled=jobs.cancelled_total,
        capacity=HealthCapacity(engine_batch=admission.engine_batch, max_concurrent=admission.max_concurrent,
                                max_queue=admission.max_queue),
        cache=HealthCache(enabled=cache.enabled, entries=cache.entries, bytes=cache.bytes,
                          hits=cache.stats.hits, misses=cache.stats.misses, evictions=cache.stats.evictions),
        routing=HealthRouting(load_score=admission.load_score, accepts_requests=speech.accepts_requests),
        rss_bytes=process_rss_bytes(), gpu_memory_bytes=gpu, jobs=job_queue,
    )  # fmt: skip


@router.get("/health")
@router.head("/health")
async def health(request: Request, speech: SpeechDep) -> Health:
    job_queue = HealthJobs(**request.app.state.jobs.health())
    return await health_report(speech, request.app.state.checkpoint_name, job_queue)


@router.get("/ready", responses=errors(503))
async def ready(speech: SpeechDep) -> Ready:
    if speech.draining:  # stopping: a load balancer takes this replica out of rotation
        raise unavailable("The server is draining before it stops.", code="draining", retry_after=None)
    if not speech.accepts_requests:
        raise unavailable("The speech engine is not ready.", code="not_ready", retry_after=None)
    return Ready()


@router.get(
    "/metrics", dependencies=[Depends(require_metrics_key)], response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus' text exposition format."}, **errors(401)},
)  # fmt: skip
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@admin.post("/reload-voices", responses=errors(400, 503))
async def reload_voices(voices: VoicesDep) -> VoicesReloaded:
    return VoicesReloaded(**await voices.reload())


@admin.post("/cache/clear")
async def clear_cache(cache: CacheDep) -> CacheCleared:
    return CacheCleared(removed=await asyncio.to_thread(cache.clear))
