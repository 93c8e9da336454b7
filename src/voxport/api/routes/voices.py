"""The voice routes: list (OpenAI's and ours), create from an upload or a server path, delete (admin), and
OpenAI's voice consents (create, list, retrieve, rename; delete: admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from voxport.api.auth import require_admin, require_api_key
from voxport.api.body import ConsentFormDep, VoiceFormDep, json_body, query
from voxport.api.deps import SettingsDep, ViewerDep, VoicesDep
from voxport.api.openapi import BODY_ERRORS, consent_request, errors, json_request, voice_upload_request
from voxport.protocol import (
    AudioVoice,
    AudioVoiceList,
    VoiceConsent,
    VoiceConsentDeleted,
    VoiceConsentList,
    VoiceConsentListParams,
    VoiceConsentUpdateParams,
    VoiceDeleted,
    VoiceFromPathParams,
    VoiceList,
    VoiceObject,
)
from voxport.voices import Voice, VoiceRegistry

router = APIRouter(dependencies=[Depends(require_api_key)], responses=errors(401), tags=["voices"])
admin = APIRouter(dependencies=[Depends(require_admin)], responses=errors(401, 403), tags=["voices", "admin"])


def _public(voice: Voice, voices: VoiceRegistry) -> VoiceObject:
    return VoiceObject(**voice.public(voices.default_voice))


@router.get("/v1/audio/voices")
async def list_audio_voices(voices: VoicesDep, viewer: ViewerDep) -> AudioVoiceList:
    listed = voices.aliases.listed(voices.all(viewer))  # aliases too: each is a name a client can use
    return AudioVoiceList(voices=[AudioVoice(id=voice_id, name=name) for voice_id, name in listed])


@router.get("/v1/voices")
async def list_voices(voices: VoicesDep, viewer: ViewerDep) -> VoiceList:
    return VoiceList(data=[_public(v, voices) for v in voices.all(viewer)])


@router.post(
    "/v1/audio/voices", status_code=201, openapi_extra=voice_upload_request(),
    responses=errors(*BODY_ERRORS, 409, 503),
)  # fmt: skip
async def create_voice(form: VoiceFormDep, voices: VoicesDep, viewer: ViewerDep) -> VoiceObject:
    """Multipart: name, audio_sample (or file), consent (a consent id, or true), optional prompt_text."""
    return _public(await voices.add(form.params.name, form.upload, form.params.consent, viewer), voices)


@router.post(
    "/v1/voices", status_code=201, openapi_extra=json_request(VoiceFromPathParams),
    responses=errors(*BODY_ERRORS, 403, 409, 503),
)  # fmt: skip
async def create_voice_from_path(
    params: Annotated[VoiceFromPathParams, Depends(json_body(VoiceFromPathParams))],
    voices: VoicesDep,
    settings: SettingsDep,
    viewer: ViewerDep,
) -> VoiceObject:
    """JSON {voice_name, prompt_wav_path, prompt_text, replace}; the file inside allowed_prompt_dir."""
    voice = await voices.add_from_path(params.voice_name, params.prompt_wav_path, params.prompt_text or None,
                                       params.replace, settings.allowed_prompt_dir, viewer)  # fmt: skip
    return _public(voice, voices)


@admin.delete("/v1/audio/voices/{voice_id}", responses=errors(404, 503))
async def delete_voice(voice_id: str, voices: VoicesDep) -> VoiceDeleted:
    await voices.delete(voice_id)
    return VoiceDeleted(id=voice_id)


# -- consents (openai-python: client.audio.voice_consents) ---------------------------------------------


@router.post(
    "/v1/audio/voice_consents", status_code=201, openapi_extra=consent_request(),
    responses=errors(*BODY_ERRORS, 503),
)  # fmt: skip
async def create_voice_consent(form: ConsentFormDep, voices: VoicesDep, viewer: ViewerDep) -> VoiceConsent:
    """Multipart: recording (the speaker's consent), name, language (BCP 47)."""
    consent = await voices.add_consent(form.params.name, form.params.language, form.upload, viewer)
    return VoiceConsent(**consent.public())


@router.get("/v1/audio/voice_consents", responses=errors(400))
async def list_voice_consents(
    params: Annotated[VoiceConsentListParams, Depends(query(VoiceConsentListParams))], voices: VoicesDep,
    viewer: ViewerDep,
) -> VoiceConsentList:  # fmt: skip
    found, more = voices.consents.page(params.after, params.limit, viewer)
    data = [VoiceConsent(**c.public()) for c in found]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return VoiceConsentList(data=data, first_id=first, last_id=last, has_more=more)


@router.get("/v1/audio/voice_consents/{consent_id}", responses=errors(404))
async def retrieve_voice_consent(consent_id: str, voices: VoicesDep, viewer: ViewerDep) -> VoiceConsent:
    return VoiceConsent(**voices.consents.get(consent_id, None, viewer).public())


@router.post(
    "/v1/audio/voice_consents/{consent_id}", openapi_extra=json_request(VoiceConsentUpdateParams),
    responses=errors(*BODY_ERRORS, 404, 503),
)  # fmt: skip
async def update_voice_consent(
    consent_id: str,
    params: Annotated[VoiceConsentUpdateParams, Depends(json_body(VoiceConsentUpdateParams))],
    voices: VoicesDep,
    viewer: ViewerDep,
) -> VoiceConsent:
    return VoiceConsent(**(await voices.consents.rename(consent_id, params.name, viewer)).public())


@admin.delete("/v1/audio/voice_consents/{consent_id}", responses=errors(404, 503))
async def delete_voice_consent(consent_id: str, voices: VoicesDep) -> VoiceConsentDeleted:
    await voices.consents.delete(consent_id)
    return VoiceConsentDeleted(id=consent_id)
