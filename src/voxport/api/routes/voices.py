"""The voice routes: list (OpenAI's and ours), create from an upload or a server path, delete (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from voxport.api.auth import require_admin, require_api_key
from voxport.api.body import VoiceFormDep, json_body
from voxport.api.deps import SettingsDep, VoicesDep
from voxport.protocol import (
    AudioVoice,
    AudioVoiceList,
    VoiceDeleted,
    VoiceFromPathParams,
    VoiceList,
    VoiceObject,
)
from voxport.voices import Voice, VoiceRegistry

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["voices"])
admin = APIRouter(dependencies=[Depends(require_admin)], tags=["voices", "admin"])


def _public(voice: Voice, voices: VoiceRegistry) -> VoiceObject:
    return VoiceObject(**voice.public(voices.default_voice))


@router.get("/v1/audio/voices")
async def list_audio_voices(voices: VoicesDep) -> AudioVoiceList:
    return AudioVoiceList(voices=[AudioVoice(id=v.id, name=v.name or v.id) for v in voices.all()])


@router.get("/v1/voices")
async def list_voices(voices: VoicesDep) -> VoiceList:
    return VoiceList(data=[_public(v, voices) for v in voices.all()])


@router.post("/v1/audio/voices", status_code=201)
async def create_voice(form: VoiceFormDep, voices: VoicesDep) -> VoiceObject:
    """Multipart: name, audio_sample (or file), optional prompt_text, consent (required, truthy)."""
    return _public(await voices.add(form.name, form.upload), voices)


@router.post("/v1/voices", status_code=201)
async def create_voice_from_path(
    params: Annotated[VoiceFromPathParams, Depends(json_body(VoiceFromPathParams))],
    voices: VoicesDep,
    settings: SettingsDep,
) -> VoiceObject:
    """JSON {voice_name, prompt_wav_path, prompt_text, replace}; the file inside allowed_prompt_dir."""
    voice = await voices.add_from_path(params.voice_name, params.prompt_wav_path, params.prompt_text,
                                       params.replace, settings.allowed_prompt_dir)  # fmt: skip
    return _public(voice, voices)


@admin.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(voice_id: str, voices: VoicesDep) -> VoiceDeleted:
    await voices.delete(voice_id)
    return VoiceDeleted(id=voice_id)
