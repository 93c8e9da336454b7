"""Voice and voice-consent request bodies and responses (openai-python's `Voice`, `VoiceConsent`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voxport.protocol.fields import Plain, Transcript, VoiceName


class PromptText(BaseModel):
    """An upload's transcript sent with a speech request: checked as the voice routes check it."""

    prompt_text: Transcript | None = None


class VoiceFromPathParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice_name: VoiceName
    prompt_wav_path: Plain = Field(min_length=1, max_length=1024)
    prompt_text: Transcript | None = None
    replace: bool = False


class VoiceCreateParams(BaseModel):
    """POST /v1/audio/voices' form fields besides the recording: openai-python's `VoiceCreateParams`
    (audio-sample form) plus voxport's `prompt_text`. `consent` is a consent id (`cons_...`) or, from
    older clients, a truthy string; the voice service checks which."""

    model_config = ConfigDict(extra="forbid")
    name: VoiceName
    consent: Plain | None = Field(None, max_length=100)
    type: Literal["audio_sample"] = "audio_sample"
    prompt_text: Transcript | None = None


class VoiceConsentCreateParams(BaseModel):
    """POST /v1/audio/voice_consents' form fields besides `recording` (openai-python's type)."""

    model_config = ConfigDict(extra="forbid")
    name: VoiceName
    language: str = Field(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")


class VoiceConsentUpdateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: VoiceName


class VoiceConsentListParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: str | None = Field(None, max_length=100)
    limit: int = Field(20, ge=1, le=100)


@dataclass(frozen=True)
class VoiceUpload:
    """A recording sent with a request (multipart), as read: bytes, its transcript, and the form field
    it came in (named in errors). Validated and encoded by the service, never kept."""

    data: bytes
    transcript: str | None
    param: str


# -- responses -------------------------------------------------------------------------------------


class AudioVoice(BaseModel):
    id: str
    name: str


class AudioVoiceList(BaseModel):
    voices: list[AudioVoice]


class VoiceObject(BaseModel):
    """openai-python's `Voice` fields first, then voxport's."""

    id: str
    object: Literal["audio.voice"] = "audio.voice"
    name: str
    type: Literal["audio_sample", "prompt"]
    created_at: int
    prompt: str | None = None  # a designed voice's description
    consent: str | None = None  # the consent id it was created with, if any
    kind: Literal["designed", "recording", "uploaded"]
    source: Literal["built-in", "user"]
    has_transcript: bool
    duration: float | None
    default: bool


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]


class VoiceDeleted(BaseModel):
    id: str
    object: Literal["audio.voice.deleted"] = "audio.voice.deleted"
    deleted: bool = True


class VoiceConsent(BaseModel):
    id: str
    object: Literal["audio.voice_consent"] = "audio.voice_consent"
    name: str
    language: str
    created_at: int


class VoiceConsentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceConsent]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VoiceConsentDeleted(BaseModel):
    id: str
    object: Literal["audio.voice_consent"] = "audio.voice_consent"
    deleted: bool = True


class VoiceAliasParams(BaseModel):
    """PUT /v1/audio/voice_aliases/{name}: the voice the alias points at, by id or library name."""

    model_config = ConfigDict(extra="forbid")
    voice: VoiceName


class VoiceAlias(BaseModel):
    name: str
    object: Literal["audio.voice_alias"] = "audio.voice_alias"
    voice: str  # as it was set: a voice id or a library voice's name
    voice_id: str | None  # the voice it resolves to now; null: that voice is gone (the alias is inert)
    source: Literal["api", "file"]  # set through the API, or in voices.json


class VoiceAliasList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceAlias]


class VoiceAliasDeleted(BaseModel):
    name: str
    object: Literal["audio.voice_alias.deleted"] = "audio.voice_alias.deleted"
    deleted: bool = True


class VoicesReloaded(BaseModel):
    added: list[str]
    changed: list[str]
    removed: list[str]
    lexicon: int  # entries in the pronunciation lexicon now
