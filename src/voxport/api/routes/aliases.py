"""Voice aliases (admin): list, set, remove. Any name can point at any voice (voices/aliases.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from voxport.api.auth import require_admin
from voxport.api.body import json_body
from voxport.api.deps import VoicesDep
from voxport.api.openapi import BODY_ERRORS, errors, json_request
from voxport.protocol import VoiceAlias, VoiceAliasDeleted, VoiceAliasList, VoiceAliasParams

router = APIRouter(
    dependencies=[Depends(require_admin)], responses=errors(401, 403), tags=["voices", "admin"]
)


@router.get("/v1/audio/voice_aliases")
async def list_voice_aliases(voices: VoicesDep) -> VoiceAliasList:
    return VoiceAliasList(data=[VoiceAlias(**alias) for alias in voices.aliases.public()])


@router.put(
    "/v1/audio/voice_aliases/{name}", openapi_extra=json_request(VoiceAliasParams),
    responses=errors(*BODY_ERRORS, 409),
)  # fmt: skip
async def set_voice_alias(
    name: str, params: Annotated[VoiceAliasParams, Depends(json_body(VoiceAliasParams))], voices: VoicesDep
) -> VoiceAlias:
    voice = await voices.aliases.put(name, params.voice)
    return VoiceAlias(name=name.strip(), voice=params.voice, voice_id=voice.id, source="api")


@router.delete("/v1/audio/voice_aliases/{name}", responses=errors(404))
async def delete_voice_alias(name: str, voices: VoicesDep) -> VoiceAliasDeleted:
    await voices.aliases.delete(name)
    return VoiceAliasDeleted(name=name)
