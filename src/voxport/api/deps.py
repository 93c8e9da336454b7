"""What a handler may ask for: `Annotated[..., Depends()]` aliases for the collaborators create_app
built, and the request's record."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from voxport.api.context import RequestRecord, current
from voxport.cache import AudioCache
from voxport.config import Settings
from voxport.metrics import Metrics
from voxport.speech import SpeechJob, SpeechService
from voxport.voices import VoiceRegistry


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _speech(request: Request) -> SpeechService:
    return request.app.state.speech


async def _voices(request: Request) -> VoiceRegistry:
    """The registry, up to date with the shared library when there is one (other replicas' changes)."""
    registry = request.app.state.speech.voices
    await registry.refresh()
    return registry


def _cache(request: Request) -> AudioCache:
    return request.app.state.speech.cache


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _record() -> RequestRecord:
    return current.get()


async def _speech_job(record: Annotated[RequestRecord, Depends(_record)]) -> SpeechJob:
    """The request's speech job, already on its record so that the access line can read it."""
    record.speech = SpeechJob(record.request_id, started=record.started)
    return record.speech


SettingsDep = Annotated[Settings, Depends(_settings)]
SpeechDep = Annotated[SpeechService, Depends(_speech)]
VoicesDep = Annotated[VoiceRegistry, Depends(_voices)]
CacheDep = Annotated[AudioCache, Depends(_cache)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
RecordDep = Annotated[RequestRecord, Depends(_record)]
SpeechJobDep = Annotated[SpeechJob, Depends(_speech_job)]
