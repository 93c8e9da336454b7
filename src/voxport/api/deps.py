"""What a handler may ask for: `Annotated[..., Depends()]` aliases for the collaborators create_app
built, and the request's record. Every provider is `async def`: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per request for an attribute read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from voxport.api.context import RequestRecord, current
from voxport.cache import AudioCache
from voxport.config import Settings
from voxport.metrics import Metrics
from voxport.speech import RequestTicket, SpeechService
from voxport.voices import VoiceRegistry


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _speech(request: Request) -> SpeechService:
    return request.app.state.speech


async def _voices(request: Request) -> VoiceRegistry:
    """The registry, up to date with the shared library when there is one (other replicas' changes)."""
    registry = request.app.state.speech.voices
    await registry.refresh()
    return registry


async def _cache(request: Request) -> AudioCache:
    return request.app.state.speech.cache


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _record() -> RequestRecord:
    return current.get()


async def _speech_job(request: Request) -> RequestTicket:
    """The request's speech job, already on its record so that the access line can read it; it belongs
    to the caller's tenant (cancel, voices, cache partition)."""
    record = current.get()
    policy, shared = request.app.state.policy, request.app.state.settings.cache_shared_across_keys
    record.speech = RequestTicket(record.request_id, started=record.started, tenant=policy.viewer(request),
                              cache_scope=policy.cache_scope(request, shared))  # fmt: skip
    return record.speech


async def _viewer(request: Request) -> str:
    """The caller as a tenant (voxport.tenants): it owns the voices and consents it makes, and sees its
    own and the shared ones; the admin key ('') sees all, and what it makes is shared."""
    return request.app.state.policy.viewer(request)


SettingsDep = Annotated[Settings, Depends(_settings)]
SpeechDep = Annotated[SpeechService, Depends(_speech)]
VoicesDep = Annotated[VoiceRegistry, Depends(_voices)]
CacheDep = Annotated[AudioCache, Depends(_cache)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
RecordDep = Annotated[RequestRecord, Depends(_record)]
TicketDep = Annotated[RequestTicket, Depends(_speech_job)]
ViewerDep = Annotated[str, Depends(_viewer)]
