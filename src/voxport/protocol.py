"""Request, response and SSE event models, named after openai-python's types so that our docs map
onto OpenAI's one to one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
StreamFormat = Literal["audio", "sse"]


class VoiceID(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)


class SpeechCreateParams(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, then VoxCPM extensions (`extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str = Field(min_length=1)
    voice: str | VoiceID | None = None
    instructions: str | None = Field(None, max_length=4096)
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
    request_id: str = Field(min_length=1, max_length=128)


class VoiceFromPathParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice_name: str = Field(min_length=1, max_length=100)
    prompt_wav_path: str = Field(min_length=1, max_length=1024)
    prompt_text: str | None = Field(None, max_length=1000)
    replace: bool = False


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
    id: str
    name: str
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
