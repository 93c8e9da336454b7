"""Routers: thin handlers that parse, delegate to the services, and shape responses."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from voxport import __version__
from voxport.api.errors import APIError, parse_json_body
from voxport.api.protocol import SpeechCreateParams
from voxport.config import Settings
from voxport.speech import SpeechService

router = APIRouter()
_STARTED = int(time.time())


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _speech(request: Request) -> SpeechService:
    return request.app.state.speech


SettingsDep = Annotated[Settings, Depends(_settings)]
SpeechDep = Annotated[SpeechService, Depends(_speech)]


@router.post(
    "/v1/audio/speech",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SpeechCreateParams.model_json_schema()}},
        }
    },
    response_class=Response,
    responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}}, "description": "The encoded audio."}},
)
async def create_speech(request: Request, speech: SpeechDep) -> Response:
    params: SpeechCreateParams = await parse_json_body(request, SpeechCreateParams)
    prepared = speech.prepare(params)
    result = await speech.synthesize(prepared, request.state.request_id)
    return Response(
        content=result.audio,
        media_type=result.content_type,
        headers={
            "X-Sample-Rate": str(result.sample_rate),
            "X-Audio-Duration": f"{result.duration:.3f}",
        },
    )


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
    ready = engine.ready
    try:
        info = engine.info
        engine_name, device = info.name, info.device
    except Exception:  # not loaded
        engine_name, device = None, None
    body = {
        "status": "ok" if ready else "unavailable",
        "version": __version__,
        "model": settings.served_model_id,
        "checkpoint": request.app.state.checkpoint_name,
        "engine": engine_name,
        "device": device,
        "ready": ready,
        "requests_in_flight": speech.in_flight,
    }
    return JSONResponse(body)
