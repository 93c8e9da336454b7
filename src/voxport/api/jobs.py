"""Speech jobs and batches: thin handlers over the jobs service (voxport.jobs.service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from voxport.api.errors import APIError, parse_json_body
from voxport.jobs.protocol import SpeechBatchCreateParams, SpeechJobCreateParams
from voxport.jobs.service import JobError, JobService
from voxport.jobs.store import key_scope

router = APIRouter(tags=["jobs"])

_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409, "busy": 429}
_EXTENSIONS = {"audio/mpeg": "mp3", "audio/opus": "opus", "audio/aac": "aac", "audio/flac": "flac",
               "audio/wav": "wav", "audio/pcm": "pcm"}  # fmt: skip


def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


JobsDep = Annotated[JobService, Depends(_jobs)]


def _scope(request: Request) -> str:
    """Jobs belong to the API key that created them (the middleware has checked it already)."""
    if not request.app.state.api_keys_configured:
        return ""
    auth = request.headers.get("authorization", "")
    return key_scope(auth[7:].strip() if auth.lower().startswith("bearer ") else None)


ScopeDep = Annotated[str, Depends(_scope)]


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise APIError(400, "'Idempotency-Key' must be 1 to 255 characters.", param="Idempotency-Key")
    return key


def _api_error(exc: JobError) -> APIError:
    status = _STATUS[exc.kind]
    headers = {"Retry-After": "60"} if status == 429 else None
    return APIError(status, exc.message, type="requests" if status == 429 else "invalid_request_error",
                    param=exc.param, code=exc.code, headers=headers)  # fmt: skip


@router.post("/v1/audio/speech/jobs", status_code=202)
async def create_job(request: Request, jobs: JobsDep, scope: ScopeDep) -> JSONResponse:
    params: SpeechJobCreateParams = await parse_json_body(request, SpeechJobCreateParams)
    try:
        job = await jobs.create(params, scope=scope, idempotency_key=_idempotency_key(request))
    except JobError as exc:
        raise _api_error(exc) from None
    return JSONResponse(job, status_code=202)


@router.get("/v1/audio/speech/jobs")
async def list_jobs(
    jobs: JobsDep, scope: ScopeDep, limit: Annotated[int, Query()] = 20, after: str | None = None
) -> dict:
    try:
        return await jobs.list(scope, limit, after)
    except JobError as exc:
        raise _api_error(exc) from None


@router.get("/v1/audio/speech/jobs/{job_id}")
async def retrieve_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> dict:
    try:
        return await jobs.get(job_id, scope)
    except JobError as exc:
        raise _api_error(exc) from None


@router.get("/v1/audio/speech/jobs/{job_id}/content")
async def job_content(job_id: str, jobs: JobsDep, scope: ScopeDep) -> FileResponse:
    try:
        path, content_type = await jobs.content(job_id, scope)
    except JobError as exc:
        raise _api_error(exc) from None
    # Starlette's FileResponse answers Range requests (206, multipart byteranges, 416).
    name = f"{job_id}.{_EXTENSIONS.get(content_type, 'bin')}"
    return FileResponse(path, media_type=content_type, filename=name, content_disposition_type="inline")


@router.post("/v1/audio/speech/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> dict:
    try:
        return await jobs.cancel(job_id, scope)
    except JobError as exc:
        raise _api_error(exc) from None


@router.delete("/v1/audio/speech/jobs/{job_id}")
async def delete_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> dict:
    try:
        return await jobs.delete(job_id, scope)
    except JobError as exc:
        raise _api_error(exc) from None


@router.post("/v1/audio/speech/batches", status_code=202)
async def create_batch(request: Request, jobs: JobsDep, scope: ScopeDep) -> JSONResponse:
    params: SpeechBatchCreateParams = await parse_json_body(request, SpeechBatchCreateParams)
    try:
        batch = await jobs.create_batch(params, scope=scope, idempotency_key=_idempotency_key(request))
    except JobError as exc:
        raise _api_error(exc) from None
    return JSONResponse(batch, status_code=202)


@router.get("/v1/audio/speech/batches/{batch_id}")
async def retrieve_batch(batch_id: str, jobs: JobsDep, scope: ScopeDep) -> dict:
    try:
        return await jobs.get_batch(batch_id, scope)
    except JobError as exc:
        raise _api_error(exc) from None
