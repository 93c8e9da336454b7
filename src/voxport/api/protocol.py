"""Request models, named after openai-python's types so our docs map onto OpenAI's one to one."""

from __future__ import annotations

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
    stream: bool = False  # voxport: stream /v1/audio/speech as it is generated
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
