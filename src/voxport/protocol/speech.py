"""Speech request bodies and SSE events, named after openai-python's types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voxport.protocol.dictionaries import MAX_REQUEST_DICTIONARIES, DictionaryName
from voxport.protocol.fields import (
    Language,
    Loudness,
    NonEmpty,
    Plain,
    Pronunciations,
    ResponseFormat,
    StreamFormat,
    Text,
)
from voxport.protocol.timings import MAX_TURNS, DialogueTurn


class VoiceID(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: NonEmpty


class SpeechCreateParams(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, then VoxCPM extensions (`extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    model: Plain
    input: Text | None = Field(None, min_length=1)  # required unless `dialogue` is given
    # voxport: "ssml" = `input` is an SSML document (speech/ssml.py; docs/api.md lists the subset).
    input_format: Literal["text", "ssml"] = "text"
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
    # voxport: text and level shaping (docs/api.md). `loudness`: unset = the server's --loudness; null = off.
    pronunciations: Pronunciations | None = None
    # voxport: named pronunciation dictionaries (docs/api.md), applied in order where their scope matches.
    pronunciation_dictionaries: list[DictionaryName] | None = Field(None, max_length=MAX_REQUEST_DICTIONARIES)
    language: Language | None = None
    loudness: Loudness | None = None
    # voxport (docs/api.md): segment times; a dialogue of several voices instead of `input`, with a gap.
    timestamps: bool = False
    dialogue: list[DialogueTurn] | None = Field(None, min_length=1, max_length=MAX_TURNS)
    dialogue_gap: float | None = Field(None, ge=0.0, le=5.0)

    @property
    def voice_id(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceID) else self.voice


class SpeechCancelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: Plain = Field(min_length=1, max_length=128)


class SpeechCancelled(BaseModel):
    request_id: str
    cancelled: bool = True


# -- speech SSE events (openai-python: SpeechAudioDeltaEvent, SpeechAudioDoneEvent) --------------------


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDeltaEvent(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str  # base64 of one encoded block
    sample_rate: int | None = None  # voxport: on the first delta only, the rate of the audio (Hz)


class SpeechAudioDoneEvent(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: Usage


class SpeechWarningsEvent(BaseModel):
    """voxport: the first event of an SSE stream whose request had something ignored (an SSML element
    stripped, an unsupported attribute); the same warnings as the X-SSML-Warnings header."""

    type: Literal["speech.warnings"] = "speech.warnings"
    warnings: list[str]


class StreamError(BaseModel):
    message: str
    type: str
    code: str | None


class SpeechErrorEvent(BaseModel):
    """Sent in-band when a stream that has begun cannot finish; the stream then ends."""

    type: Literal["error"] = "error"
    error: StreamError
