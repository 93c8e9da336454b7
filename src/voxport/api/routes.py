"""Routers: thin handlers that parse, delegate to the services, and shape responses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voxport import __version__
from voxport.api.errors import APIError, parse_json_body
from voxport.api.protocol import SpeechCancelParams, SpeechCreateParams
from voxport.audio import FORMATS
from voxport.config import Settings
from voxport.speech import RequestCancelled, SpeechJob, SpeechService

log = logging.getLogger("voxport.api")
router = APIRouter()
_STARTED = int(time.time())


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _speech(request: Request) -> SpeechService:
    return request.app.state.speech


SettingsDep = Annotated[Settings, Depends(_settings)]
SpeechDep = Annotated[SpeechService, Depends(_speech)]


_SPEECH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SpeechCreateParams.model_json_schema()}},
    }
}
_AUDIO_RESPONSES = {200: {"content": {"audio/mpeg": {}, "text/event-stream": {}}, "description": "Audio."}}


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, job: SpeechJob) -> AsyncIterator[None]:
    """While the body is open, a client that disconnects cancels its job (and so its generation)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _sse(job: SpeechJob, audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE events: speech.audio.delta per encoded block, then speech.audio.done."""

    def event(payload: dict) -> bytes:
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    async def events() -> AsyncIterator[bytes]:
        try:
            async for data in audio:
                yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        except Exception as exc:  # the stream has begun: report in-band, then close
            log.exception("request %s failed mid-stream", job.request_id)
            message = "Internal error while streaming." if not isinstance(exc, APIError) else exc.message
            yield event(
                {"type": "error", "error": {"message": message, "type": "server_error", "code": None}}
            )
            return
        if job.cancel.is_set():
            yield event(
                {
                    "type": "error",
                    "error": {
                        "message": "The request was cancelled.",
                        "type": "invalid_request_error",
                        "code": "request_cancelled",
                    },
                }
            )
            return
        yield event({"type": "speech.audio.done", "usage": job.usage})

    return events()


def _no_cache(request: Request, params: SpeechCreateParams) -> bool:
    directives = request.headers.get("cache-control", "").lower()
    return not params.cache or "no-cache" in directives or "no-store" in directives


def _cache_headers(job: SpeechJob) -> dict[str, str]:
    return {"X-Cache": job.cache, "X-Route": "CACHE" if job.cache == "HIT" else "HOT"}


async def _speak(request: Request, speech: SpeechService, stream: bool) -> Response:
    params: SpeechCreateParams = await parse_json_body(request, SpeechCreateParams)
    prepared = speech.prepare(params, stream=stream)
    no_cache = _no_cache(request, params)
    async with contextlib.AsyncExitStack() as stack:
        job = await stack.enter_async_context(speech.track(request.state.request_id, prepared))
        request.state.speech_job = job
        content_type = FORMATS[prepared.response_format].content_type
        headers = {"X-Sample-Rate": str(prepared.sample_rate)}
        if not prepared.stream:
            try:
                async with _cancel_on_disconnect(request, job):
                    result = await speech.respond(prepared, job, no_cache)
            except RequestCancelled:
                raise APIError(499, "The request was cancelled.", code="request_cancelled") from None
            headers["X-Audio-Duration"] = f"{result.duration:.3f}"
            headers.update(_cache_headers(job))
            return Response(content=result.audio, media_type=content_type, headers=headers)

        try:
            async with _cancel_on_disconnect(request, job):
                audio = await speech.stream(prepared, job, no_cache)
        except RequestCancelled:
            raise APIError(499, "The request was cancelled.", code="request_cancelled") from None
        # From here the response owns the job: it stays registered until the body is done.
        release = stack.pop_all()

        async def body() -> AsyncIterator[bytes]:
            async with release:
                source = _sse(job, audio) if prepared.sse else audio
                async for data in source:
                    yield data

        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_cache_headers(job)})
        media_type = "text/event-stream" if prepared.sse else content_type
        return StreamingResponse(body(), media_type=media_type, headers=headers)
    raise AssertionError("unreachable")  # pragma: no cover


@router.post(
    "/v1/audio/speech", openapi_extra=_SPEECH_BODY, response_class=Response, responses=_AUDIO_RESPONSES
)
async def create_speech(request: Request, speech: SpeechDep) -> Response:
    return await _speak(request, speech, stream=False)


@router.post(
    "/v1/audio/speech/stream", openapi_extra=_SPEECH_BODY, response_class=Response, responses=_AUDIO_RESPONSES
)
async def stream_speech(request: Request, speech: SpeechDep) -> Response:
    return await _speak(request, speech, stream=True)


@router.post("/v1/audio/speech/cancel")
async def cancel_speech(request: Request, speech: SpeechDep) -> dict:
    params: SpeechCancelParams = await parse_json_body(request, SpeechCancelParams)
    if not speech.cancel(params.request_id):
        raise APIError(
            404,
            f"No request '{params.request_id}' is in flight.",
            param="request_id",
            code="request_not_found",
        )
    return {"request_id": params.request_id, "cancelled": True}


def _model_card(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "voxport"}


@router.get("/v1/models")
async def list_models(settings: SettingsDep) -> dict:
    return {"object": "list", "data": [_model_card(m) for m in settings.model_ids]}


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: str, settings: SettingsDep) -> dict:
    if model_id not in settings.model_ids:
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return _model_card(model_id)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request, settings: SettingsDep, speech: SpeechDep) -> JSONResponse:
    engine = speech.engine
    try:
        info = engine.info
        engine_name, device = info.name, info.device
    except Exception:  # not loaded
        engine_name, device = None, None
    if speech.watch.stalled:
        state = "stalled"
    elif engine.ready:
        state = "ready"
    else:
        state = "unavailable"
    cache = speech.cache
    body = {
        "status": "ok" if state == "ready" else "unavailable",
        "version": __version__,
        "model": settings.served_model_id,
        "checkpoint": request.app.state.checkpoint_name,
        "engine": engine_name,
        "engine_state": state,
        "device": device,
        "ready": speech.accepts_requests,
        "requests_in_flight": speech.in_flight,
        "requests_generating": speech.generating,
        "requests_queued": speech.queued,
        "requests_cancelled": speech.cancelled_total,
        "cache": {
            "enabled": cache.enabled,
            "entries": cache.entries,
            "bytes": cache.bytes,
            "hits": cache.stats.hits,
            "misses": cache.stats.misses,
            "evictions": cache.stats.evictions,
        },
        "routing": {"load_score": speech.load_score, "accepts_requests": speech.accepts_requests},
        "rss_bytes": _rss_bytes(),
    }
    return JSONResponse(body)


@router.get("/ready")
async def ready(speech: SpeechDep) -> dict:
    if not speech.accepts_requests:
        raise APIError(503, "The speech engine is not ready.", type="server_error", code="not_ready")
    return {"ready": True}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/admin/cache/clear")
async def clear_cache(speech: SpeechDep) -> dict:
    removed = await asyncio.to_thread(speech.cache.clear)
    return {"removed": removed}
