"""POST /v1/audio/speech (and /stream, /cancel): one service call, then the response's shape: bytes,
a raw audio stream, or OpenAI's speech SSE events."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from voxport.api.auth import require_api_key
from voxport.api.body import SpeechBodyDep, json_body
from voxport.api.deps import SpeechDep, TicketDep, ViewerDep
from voxport.api.errors import as_error
from voxport.api.openapi import BODY_ERRORS, errors, json_request, schema_ref, speech_request
from voxport.protocol import (
    SpeechAudioDeltaEvent,
    SpeechAudioDoneEvent,
    SpeechAudioSegmentEvent,
    SpeechCancelled,
    SpeechCancelParams,
    SpeechCreateParams,
    SpeechErrorEvent,
    SpeechTimedAudio,
    SpeechWarningsEvent,
    StreamError,
    Usage,
)
from voxport.speech import RequestTicket, SpeechResult, SpeechStream

log = logging.getLogger("voxport.api")
router = APIRouter(dependencies=[Depends(require_api_key)], responses=errors(401), tags=["speech"])

_AUDIO = (
    "audio/mpeg",
    "audio/ogg",
    "audio/aac",
    "audio/flac",
    "audio/wav",
    "audio/pcm",
    "audio/basic",
    "audio/x-alaw-basic",
)
_SPEECH_ROUTE = {
    "openapi_extra": speech_request(),
    "response_class": Response,
    "responses": {
        200: {
            "description": "The audio in `response_format`; OpenAI's speech events for `stream_format: sse`; "
            "with `timestamps` (not streamed), a JSON body with the audio in base64 and its segment times.",
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in _AUDIO}
            | {"text/event-stream": {"schema": {"type": "string"}}}
            | {"application/json": {"schema": schema_ref(SpeechTimedAudio)}},
        },
        **errors(*BODY_ERRORS, 404, 429, 499, 503, 504),
    },
}


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, cancel: asyncio.Event) -> AsyncIterator[None]:
    """While the body is open, a client that disconnects cancels its job (and so its generation).

    The watcher task is started by the event loop's next turn, so only once the body has yielded to the
    loop: before that it could not have seen a disconnect anyway, and a body that never yields (a cache
    hit from memory) costs no task."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    watcher: asyncio.Task[None] | None = None

    def arm() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(watch())

    armed = asyncio.get_running_loop().call_soon(arm)
    try:
        yield
    finally:
        armed.cancel()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _no_cache(request: Request, params: SpeechCreateParams) -> bool:
    directives = request.headers.get("cache-control", "").lower()
    return not params.cache or "no-cache" in directives or "no-store" in directives


def warnings_header(warnings: tuple[str, ...]) -> str:
    """Warnings as one header value, "; " between them (ASCII: anything else percent-encoded)."""
    return "; ".join(quote(w, safe=" '<>/=:,.()-_\"") for w in warnings)


def _cache_headers(job: RequestTicket) -> dict[str, str]:
    route = "CACHE" if job.cache == "HIT" else "ADHOC" if job.voice_kind == "adhoc" else "HOT"
    warned = {"X-SSML-Warnings": warnings_header(job.warnings)} if job.warnings else {}
    return {"X-Cache": job.cache, "X-Route": route, **warned}


def _event(
    event: SpeechAudioDeltaEvent
    | SpeechAudioDoneEvent
    | SpeechErrorEvent
    | SpeechAudioSegmentEvent
    | SpeechWarningsEvent,
) -> bytes:
    exclude_none = isinstance(event, SpeechAudioDeltaEvent)  # sample_rate: on the first delta only
    return b"data: " + event.model_dump_json(exclude_none=exclude_none).encode() + b"\n\n"


def _segments(stream: SpeechStream, final: bool = False) -> list[bytes]:
    """`speech.audio.segment` events (with `timestamps`) for the segments whose audio has begun."""
    if stream.timeline is None or not stream.prepared.timestamps:
        return []
    return [_event(SpeechAudioSegmentEvent(**s)) for s in stream.timeline.pending(final)]


async def _sse(stream: SpeechStream) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE events: speech.audio.delta per encoded block, then speech.audio.done; with
    `timestamps`, a speech.audio.segment event before each segment's first audio."""
    job = stream.job
    rate: int | None = stream.prepared.sample_rate
    if job.warnings:
        yield _event(SpeechWarningsEvent(warnings=list(job.warnings)))
    try:
        async for data in stream:
            for event in _segments(stream):
                yield event
            yield _event(SpeechAudioDeltaEvent(audio=base64.b64encode(data).decode(), sample_rate=rate))
            rate = None
        for event in _segments(stream, final=not job.cancel.is_set()):
            yield event
    except Exception as exc:  # the stream has begun: report in-band, then close
        log.exception("request %s failed mid-stream", job.request_id)
        error = as_error(exc)
        message = error.message if error is not None else "Internal error while streaming."
        yield _event(SpeechErrorEvent(error=StreamError(message=message, type="server_error", code=None)))
        return
    if job.cancel.is_set():
        error = StreamError(message="The request was cancelled.", type="invalid_request_error",
                            code="request_cancelled")  # fmt: skip
        yield _event(SpeechErrorEvent(error=error))
        return
    yield _event(SpeechAudioDoneEvent(usage=Usage(**job.usage)))


def _response(outcome: SpeechResult | SpeechStream, job: RequestTicket) -> Response:
    if isinstance(outcome, SpeechResult):
        headers = {"X-Sample-Rate": str(outcome.sample_rate), "X-Audio-Duration": f"{outcome.duration:.3f}",
                   **_cache_headers(job)}  # fmt: skip
        if outcome.segments is not None:
            body = SpeechTimedAudio(audio=base64.b64encode(outcome.audio).decode(), segments=outcome.segments,
                                    content_type=outcome.content_type, sample_rate=outcome.sample_rate,
                                    duration=outcome.duration)  # fmt: skip
            return JSONResponse(body.model_dump(), headers=headers)
        return Response(outcome.audio, media_type=outcome.content_type, headers=headers)
    prepared = outcome.prepared

    async def body() -> AsyncIterator[bytes]:
        try:
            async for data in _sse(outcome) if prepared.sse else outcome:
                yield data
        finally:
            await outcome.aclose()

    headers = {"X-Sample-Rate": str(prepared.sample_rate), "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no", **_cache_headers(job)}  # fmt: skip
    media_type = "text/event-stream" if prepared.sse else prepared.content_type
    return StreamingResponse(body(), media_type=media_type, headers=headers)


@router.post("/v1/audio/speech", **_SPEECH_ROUTE)
async def create_speech(request: Request, body: SpeechBodyDep, speech: SpeechDep, job: TicketDep) -> Response:
    no_cache = _no_cache(request, body.params)
    async with _cancel_on_disconnect(request, job.cancel):
        outcome = await speech.create(body.params, job, upload=body.upload, no_cache=no_cache)
    return _response(outcome, job)


@router.post("/v1/audio/speech/stream", **_SPEECH_ROUTE)
async def stream_speech(request: Request, body: SpeechBodyDep, speech: SpeechDep, job: TicketDep) -> Response:
    no_cache = _no_cache(request, body.params)
    async with _cancel_on_disconnect(request, job.cancel):
        outcome = await speech.create(body.params, job, stream=True, upload=body.upload, no_cache=no_cache)
    return _response(outcome, job)


@router.post(
    "/v1/audio/speech/cancel",
    openapi_extra=json_request(SpeechCancelParams),
    responses=errors(*BODY_ERRORS, 404),
)
async def cancel_speech(
    params: Annotated[SpeechCancelParams, Depends(json_body(SpeechCancelParams))], speech: SpeechDep,
    viewer: ViewerDep,
) -> SpeechCancelled:  # fmt: skip
    await speech.cancel(params.request_id, viewer)
    return SpeechCancelled(request_id=params.request_id)
