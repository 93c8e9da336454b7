"""Speech jobs and batches (docs/jobs.md): one jobs-service call per handler."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from voxport.api.auth import require_api_key
from voxport.api.body import json_body
from voxport.api.openapi import BODY_ERRORS, errors, json_request
from voxport.api.ranged import ranged_file
from voxport.errors import invalid
from voxport.jobs.protocol import SpeechBatchCreateParams, SpeechJobCreateParams
from voxport.jobs.service import JobService

# 503 on every route: with --redis-url, the job store itself can be unreachable (docs/jobs.md).
router = APIRouter(dependencies=[Depends(require_api_key)], responses=errors(401, 503), tags=["jobs"])

_EXTENSIONS = {"audio/mpeg": "mp3", "audio/opus": "opus", "audio/aac": "aac", "audio/flac": "flac",
               "audio/wav": "wav", "audio/pcm": "pcm", "audio/basic": "ulaw",
               "audio/x-alaw-basic": "alaw"}  # fmt: skip


async def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


async def _scope(request: Request) -> str:
    """Jobs belong to the API key (the tenant) that created them (require_api_key has checked it)."""
    return request.app.state.policy.tenant(request)


async def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise invalid("'Idempotency-Key' must be 1 to 255 characters.", "Idempotency-Key")
    return key


JobsDep = Annotated[JobService, Depends(_jobs)]
ScopeDep = Annotated[str, Depends(_scope)]
IdempotencyDep = Annotated[str | None, Depends(_idempotency_key)]


@router.post(
    "/v1/audio/speech/jobs", status_code=202, openapi_extra=json_request(SpeechJobCreateParams),
    responses=errors(*BODY_ERRORS, 404, 409, 429, 503, 504),
)  # fmt: skip
async def create_job(
    params: Annotated[SpeechJobCreateParams, Depends(json_body(SpeechJobCreateParams))],
    jobs: JobsDep, scope: ScopeDep, key: IdempotencyDep,
) -> JSONResponse:  # fmt: skip
    return JSONResponse(await jobs.create(params, scope=scope, idempotency_key=key), status_code=202)


@router.get("/v1/audio/speech/jobs", responses=errors(400))
async def list_jobs(
    jobs: JobsDep, scope: ScopeDep, limit: Annotated[int, Query()] = 20, after: str | None = None
) -> dict[str, Any]:
    return await jobs.list(scope, limit, after)


@router.get("/v1/audio/speech/jobs/{job_id}", responses=errors(404))
async def retrieve_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> dict[str, Any]:
    return await jobs.get(job_id, scope)


async def _content(job_id: str, jobs: JobService, scope: str) -> FileResponse:
    path, content_type = await jobs.content(job_id, scope)
    return await ranged_file(Path(path), content_type, f"{job_id}.{_EXTENSIONS.get(content_type, 'bin')}")


@router.get("/v1/audio/speech/jobs/{job_id}/content", responses=errors(400, 404, 409, 416),
            response_class=FileResponse)  # fmt: skip
async def job_content(job_id: str, jobs: JobsDep, scope: ScopeDep) -> FileResponse:
    """The audio; Range requests get 206 (multipart for several ranges)."""
    return await _content(job_id, jobs, scope)


@router.head("/v1/audio/speech/jobs/{job_id}/content", responses=errors(400, 404, 409, 416),
             response_class=FileResponse)  # fmt: skip
async def job_content_head(job_id: str, jobs: JobsDep, scope: ScopeDep) -> FileResponse:
    """The audio's headers alone (Content-Length, Accept-Ranges)."""
    return await _content(job_id, jobs, scope)


_CAPTIONS = {"description": "The job's captions: one cue per synthesised segment (docs/jobs.md).",
             "content": {"text/vtt": {"schema": {"type": "string"}},
                         "application/x-subrip": {"schema": {"type": "string"}}}}  # fmt: skip


@router.get("/v1/audio/speech/jobs/{job_id}/captions", response_class=Response,
            responses={200: _CAPTIONS, **errors(400, 404, 409)})  # fmt: skip
async def job_captions(
    job_id: str, jobs: JobsDep, scope: ScopeDep, format: Annotated[str, Query(description="vtt, srt")] = "vtt"
) -> Response:
    text, content_type = await jobs.captions(job_id, scope, format)
    return Response(text, media_type=content_type)


@router.post("/v1/audio/speech/jobs/{job_id}/cancel", responses=errors(404, 409))
async def cancel_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> dict[str, Any]:
    return await jobs.cancel(job_id, scope)


@router.delete("/v1/audio/speech/jobs/{job_id}", responses=errors(404, 409))
async def delete_job(job_id: str, jobs: JobsDep, scope: ScopeDep) -> dict[str, Any]:
    return await jobs.delete(job_id, scope)


@router.post(
    "/v1/audio/speech/batches", status_code=202, openapi_extra=json_request(SpeechBatchCreateParams),
    responses=errors(*BODY_ERRORS, 404, 409, 429, 503, 504),
)  # fmt: skip
async def create_batch(
    params: Annotated[SpeechBatchCreateParams, Depends(json_body(SpeechBatchCreateParams))],
    jobs: JobsDep, scope: ScopeDep, key: IdempotencyDep,
) -> JSONResponse:  # fmt: skip
    return JSONResponse(await jobs.create_batch(params, scope=scope, idempotency_key=key), status_code=202)


@router.get("/v1/audio/speech/batches/{batch_id}", responses=errors(404))
async def retrieve_batch(batch_id: str, jobs: JobsDep, scope: ScopeDep) -> dict[str, Any]:
    return await jobs.get_batch(batch_id, scope)
