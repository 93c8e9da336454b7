"""Request, response and SSE event models, named after openai-python's types so that our docs map
onto OpenAI's one to one.

It is longer than 300 lines because it is the one place a reader looks up any wire shape (speech, voices,
consents, events, errors); splitting it by feature is the next step once jobs add theirs."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
StreamFormat = Literal["audio", "sse"]
_LINE_BREAKS = frozenset("\t\n\r")


def control_character(value: str, allow: frozenset[str] = frozenset()) -> str | None:
    """The first control character (or unpaired surrogate) in `value` not in `allow`, as U+XXXX."""
    for char in value:
        if char not in allow and unicodedata.category(char) in ("Cc", "Cs"):
            return f"U+{ord(char):04X}"
    return None


def _plain(value: str) -> str:
    found = control_character(value)
    if found:
        raise ValueError(f"must not contain control characters ({found})")
    return value


def _text(value: str) -> str:
    found = control_character(value, _LINE_BREAKS)
    if found:
        raise ValueError(f"must not contain control characters other than tabs and line breaks ({found})")
    return value


# Names, ids and paths: no control character at all. Free text (what is spoken, styled or transcribed)
# may also hold tabs and line breaks. NUL in a path used to reach the file system as a 500.
Plain = Annotated[str, AfterValidator(_plain)]
Text = Annotated[str, AfterValidator(_text)]
NonEmpty = Annotated[str, Field(min_length=1), AfterValidator(_plain)]


class VoiceID(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: NonEmpty


class SpeechCreateParams(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, then VoxCPM extensions (`extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    model: Plain
    input: Text = Field(min_length=1)
    voice: NonEmpty | VoiceID | None = None
    instructions: Text | None = Field(None, max_length=4096)
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: StreamFormat = "audio"
    # voxport: false = the whole file at once, with Content-Length and X-Audio-Duration; unset = the
    # server's setting (stream_speech, on by default: sent as it is generated, as OpenAI's endpoint does).
    stream: bool | None = None
    cache: bool = True  # voxport: false = nothing about this request is read from or written to the cache

    cfg_value: float = Field(2.0, ge=0.0, le=10.0)
    inference_timesteps: int | None = Field(None, ge=1, le=100)
    max_length: int | None = Field(None, ge=1, le=2048)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    normalize: bool = False
    sample_rate: int | None = Field(None, ge=8000, le=48000)

    @property
    def voice_id(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceID) else self.voice


class SpeechCancelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: Plain = Field(min_length=1, max_length=128)


# The checks every way of creating a library voice shares (multipart and JSON alike).
VoiceName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(_plain)
]
Transcript = Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000), AfterValidator(_text)]


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


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "voxport"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class SpeechCancelled(BaseModel):
    request_id: str
    cancelled: bool = True


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


class VoicesReloaded(BaseModel):
    added: list[str]
    changed: list[str]
    removed: list[str]


class CacheCleared(BaseModel):
    removed: int


class Ready(BaseModel):
    ready: bool = True


class HealthCache(BaseModel):
    enabled: bool
    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int


class HealthRouting(BaseModel):
    load_score: float
    accepts_requests: bool


class HealthCapacity(BaseModel):
    """What the engine runs at once, and the admission limits sized from it (docs/configuration.md)."""

    engine_batch: int
    max_concurrent: int
    max_queue: int


class HealthJobs(BaseModel):
    queued: int  # speech jobs waiting to run
    running: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    model: str
    checkpoint: str
    engine: str | None
    engine_state: Literal["ready", "stalled", "unavailable"]
    attention: str | None
    device: str | None
    ready: bool
    requests_in_flight: int
    requests_generating: int
    requests_queued: int
    requests_cancelled: int
    capacity: HealthCapacity
    cache: HealthCache
    routing: HealthRouting
    rss_bytes: int | None
    gpu_memory_bytes: int | None  # this process and its children (nano-vllm's worker), per NVML
    jobs: HealthJobs | None = None


# -- speech SSE events (openai-python: SpeechAudioDeltaEvent, SpeechAudioDoneEvent) --------------------


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDeltaEvent(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str  # base64 of one encoded block


class SpeechAudioDoneEvent(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: Usage


class StreamError(BaseModel):
    message: str
    type: str
    code: str | None


class SpeechErrorEvent(BaseModel):
    """Sent in-band when a stream that has begun cannot finish; the stream then ends."""

    type: Literal["error"] = "error"
    error: StreamError
