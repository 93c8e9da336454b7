"""Routers: thin handlers that parse, delegate to the services, and shape responses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from voxport import __version__
from voxport.api.errors import APIError, invalid, parse_json_body, validation_error
from voxport.api.protocol import SpeechCancelParams, SpeechCreateParams, VoiceFromPathParams
from voxport.audio import FORMATS
from voxport.config import Settings
from voxport.engine.base import VoicePrompt
from voxport.metrics import gpu_memory_bytes, process_rss_bytes
from voxport.speech import RequestCancelled, SpeechJob, SpeechService
from voxport.voices import VoiceError, VoicesFileError

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
    route = "CACHE" if job.cache == "HIT" else "ADHOC" if job.voice_kind == "adhoc" else "HOT"
    return {"X-Cache": job.cache, "X-Route": route}


def _is_form(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))


def _voice_error(exc: VoiceError) -> APIError:
    return APIError(exc.status, str(exc), param=exc.param, code=exc.code)


def _upload_cap(request: Request, settings: Settings) -> int:
    """The upload size cap in bytes; a declared body far beyond it is refused before it is read."""
    cap = int(settings.max_upload_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + 2**20:
        raise APIError(413, f"The request body exceeds the {settings.max_upload_mb:g} MiB upload limit.",
                       code="file_too_large")  # fmt: skip
    return cap


async def _read_file(upload: UploadFile, cap: int, param: str, settings: Settings) -> bytes:
    data = await upload.read(cap + 1)
    if len(data) > cap:
        message = f"'{param}' exceeds the {settings.max_upload_mb:g} MiB upload limit."
        raise APIError(413, message, param=param,
                       code="file_too_large")  # fmt: skip
    if not data:
        raise invalid(f"'{param}' is empty.", param, "invalid_audio")
    return data


async def _form(request: Request, settings: Settings) -> tuple[dict[str, str], dict[str, UploadFile], int]:
    cap = _upload_cap(request, settings)
    try:
        form = await request.form(max_files=4, max_fields=40)
    except Exception as exc:  # malformed multipart
        raise invalid(f"The multipart body cannot be parsed: {exc}.", None, "invalid_body") from None
    fields: dict[str, str] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile) or hasattr(value, "read"):
            files[name] = value  # type: ignore[assignment]
        else:
            fields[name] = value
    return fields, files, cap


async def _speech_params(
    request: Request, speech: SpeechService
) -> tuple[SpeechCreateParams, VoicePrompt | None]:
    """JSON body, or a form (multipart, or urlencoded) with the same fields plus an optional recording to
    clone for this request."""
    if not _is_form(request):
        return await parse_json_body(request, SpeechCreateParams), None
    fields, files, cap = await _form(request, speech.settings)
    transcript = fields.pop("prompt_text", None) or None
    names = [n for n in ("custom_voice_file", "speaker_wav") if n in files]  # the first one wins
    unknown = set(files) - {"custom_voice_file", "speaker_wav"}
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(f"Unrecognized file field '{name}'.", name, "unknown_parameter")
    try:
        params = SpeechCreateParams.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if not names:
        if transcript:
            raise invalid("'prompt_text' needs a recording in 'custom_voice_file'.", "prompt_text")
        return params, None
    param = names[0]
    data = await _read_file(files[param], cap, param, speech.settings)
    try:
        upload = await speech.voices.read_upload(data, transcript, param)
        return params, await speech.voices.adhoc_prompt(upload, transcript)
    except VoiceError as exc:
        raise _voice_error(exc) from None


async def _speak(request: Request, speech: SpeechService, stream: bool) -> Response:
    started = time.perf_counter()
    params, adhoc = await _speech_params(request, speech)
    prepared = await speech.prepare(params, stream=stream, adhoc=adhoc)
    no_cache = _no_cache(request, params)
    async with contextlib.AsyncExitStack() as stack:
        job = await stack.enter_async_context(speech.track(request.state.request_id, prepared, started))
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


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request, settings: SettingsDep, speech: SpeechDep) -> JSONResponse:
    engine = speech.engine
    try:
        info = engine.info
        engine_name, device, attention = info.name, info.device, info.attention
    except Exception:  # not loaded
        engine_name, device, attention = None, None, None
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
        "attention": attention,
        "device": device,
        "ready": speech.accepts_requests,
        "requests_in_flight": speech.in_flight,
        "requests_generating": speech.generating,
        "requests_queued": speech.queued,
        "requests_cancelled": speech.cancelled_total,
        # What the engine runs at once, and the admission limits sized from it (docs/configuration.md).
        "capacity": {
            "engine_batch": engine.capacity,
            "max_concurrent": speech.max_concurrent,
            "max_queue": speech.max_queue,
        },
        "cache": {
            "enabled": cache.enabled,
            "entries": cache.entries,
            "bytes": cache.bytes,
            "hits": cache.stats.hits,
            "misses": cache.stats.misses,
            "evictions": cache.stats.evictions,
        },
        "routing": {"load_score": speech.load_score, "accepts_requests": speech.accepts_requests},
        "jobs": request.app.state.jobs.health(),  # speech jobs waiting (queued) and being run
        "rss_bytes": process_rss_bytes(),
        # This process and its children (nano-vllm's worker) on the GPU, per NVML; null off CUDA.
        "gpu_memory_bytes": (
            await asyncio.to_thread(gpu_memory_bytes) if device and device.startswith("cuda") else None
        ),
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


@router.get("/v1/audio/voices")
async def list_audio_voices(speech: SpeechDep) -> dict:
    return {"voices": [{"id": v.id, "name": v.name or v.id} for v in speech.voices.all()]}


@router.get("/v1/voices")
async def list_voices(speech: SpeechDep) -> dict:
    default = speech.voices.default_voice
    return {"object": "list", "data": [v.public(default) for v in speech.voices.all()]}


_TRUTHY = {"1", "true", "yes", "on", "y", "t"}


@router.post("/v1/audio/voices", status_code=201)
async def create_voice(request: Request, speech: SpeechDep) -> dict:
    """Multipart: name, audio_sample (or file), optional prompt_text, consent (required, truthy)."""
    if not _is_form(request):
        raise invalid(
            "Send multipart/form-data with 'name', 'audio_sample' and 'consent'.", None, "invalid_body"
        )
    fields, files, cap = await _form(request, speech.settings)
    name = fields.get("name", "").strip()
    if not name or len(name) > 100:
        raise invalid("'name' is required (1 to 100 characters).", "name")
    if fields.get("consent", "").strip().lower() not in _TRUTHY:
        raise invalid(
            "'consent' must be true: confirm you have the speaker's permission.",
            "consent",
            "consent_required",
        )
    param = next((n for n in ("audio_sample", "file") if n in files), None)
    if param is None:
        raise invalid("Missing required file: 'audio_sample'.", "audio_sample", "missing_required_parameter")
    transcript = fields.get("prompt_text", "").strip() or None
    data = await _read_file(files[param], cap, param, speech.settings)
    try:
        upload = await speech.voices.read_upload(data, transcript, param)
        voice = await speech.voices.create(name, upload, transcript)
    except VoiceError as exc:
        raise _voice_error(exc) from None
    return voice.public(speech.voices.default_voice)


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(voice_id: str, speech: SpeechDep) -> dict:
    try:
        await speech.voices.delete(voice_id)
    except VoiceError as exc:
        raise _voice_error(exc) from None
    return {"id": voice_id, "deleted": True}


@router.post("/v1/voices", status_code=201)
async def create_voice_from_path(request: Request, speech: SpeechDep, settings: SettingsDep) -> dict:
    """JSON {voice_name, prompt_wav_path, prompt_text, replace}; the file inside allowed_prompt_dir."""
    params: VoiceFromPathParams = await parse_json_body(request, VoiceFromPathParams)
    root = settings.allowed_prompt_dir
    if root is None:
        raise APIError(
            403, "Reading recordings from server paths is off (no allowed_prompt_dir).", code="forbidden"
        )
    path = (root / params.prompt_wav_path).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        raise APIError(403, "'prompt_wav_path' is outside the allowed directory.", param="prompt_wav_path",
                       code="forbidden") from None  # fmt: skip
    if not path.is_file():
        raise invalid("'prompt_wav_path' does not name a file in the allowed directory.", "prompt_wav_path")
    existing = speech.voices.find_user(params.voice_name)
    if existing is not None and not params.replace:
        raise APIError(409, f"A voice named '{params.voice_name}' exists; pass \"replace\": true.",
                       param="voice_name", code="voice_exists")  # fmt: skip
    data = await asyncio.to_thread(path.read_bytes)
    try:
        upload = await speech.voices.read_upload(data, params.prompt_text, "prompt_wav_path")
        voice = await speech.voices.create(
            params.voice_name, upload, params.prompt_text, replace_id=existing.id if existing else None
        )
    except VoiceError as exc:
        raise _voice_error(exc) from None
    return voice.public(speech.voices.default_voice)


@router.post("/admin/reload-voices")
async def reload_voices(speech: SpeechDep) -> dict:
    try:
        return await speech.voices.reload()
    except VoicesFileError as exc:
        raise invalid(
            f"voices.json was not reloaded, the previous voices stay: {exc}", None, "invalid_voices_file"
        ) from None


@router.post("/admin/cache/clear")
async def clear_cache(speech: SpeechDep) -> dict:
    removed = await asyncio.to_thread(speech.cache.clear)
    return {"removed": removed}
