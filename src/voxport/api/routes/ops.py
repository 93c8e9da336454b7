"""Operations: /health, /ready, /metrics, and the admin routes (reload voices.json, clear the cache)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from voxport.api.auth import require_admin, require_metrics_key
from voxport.api.deps import CacheDep, MetricsDep, VoicesDep
from voxport.api.middleware import Answer
from voxport.api.openapi import errors
from voxport.api.probes import Probes
from voxport.protocol import CacheCleared, Health, Ready, VoicesReloaded

router = APIRouter(tags=["ops"])  # open: probes and load balancers call these without a key
admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=errors(401, 403),
                  tags=["admin"])  # fmt: skip


def _probe(answer: Answer) -> Response:
    status, headers, body = answer
    return Response(body, status, {k.decode(): v.decode() for k, v in headers})


# The request layer answers these three before the router (api/probes.py); here for the OpenAPI document
# and for a stack without that layer, with the same answers.
@router.get("/health", response_model=Health)
@router.head("/health", response_model=Health)
async def health(request: Request) -> Response:
    probes: Probes = request.app.state.probes
    return _probe(await (probes.head_health() if request.method == "HEAD" else probes.get_health()))


@router.get("/ready", response_model=Ready, responses=errors(503))
async def ready(request: Request) -> Response:
    return _probe(await request.app.state.probes.ready())


@router.get(
    "/metrics", dependencies=[Depends(require_metrics_key)], response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus' text exposition format."}, **errors(401)},
)  # fmt: skip
async def metrics(metrics: MetricsDep) -> Response:
    return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@admin.post("/reload-voices", responses=errors(400, 503))
async def reload_voices(voices: VoicesDep) -> VoicesReloaded:
    return VoicesReloaded(**await voices.reload())


@admin.post("/cache/clear")
async def clear_cache(cache: CacheDep) -> CacheCleared:
    return CacheCleared(removed=await asyncio.to_thread(cache.clear))
