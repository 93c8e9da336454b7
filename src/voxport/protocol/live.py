"""The speech WebSocket's messages (GET /v1/audio/speech/ws, docs/api.md#speech-websocket): what a client
sends, one JSON text frame each, and the events the server sends back. The names follow the sockets voice
agents already speak (ElevenLabs, Cartesia, Deepgram): contexts, text, flush, close, cancel."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voxport.protocol.fields import Plain, Text
from voxport.protocol.speech import Usage

# The first message of a context may carry these options of POST /v1/audio/speech, validated as there.
CONTEXT_OPTIONS = frozenset(
    {
        "model", "voice", "instructions", "response_format", "speed", "sample_rate", "language", "seed",
        "max_length", "cfg_value", "inference_timesteps", "normalize", "pronunciations",
        "pronunciation_dictionaries", "input_format",
    }
)  # fmt: skip
# Options of the HTTP route that a context cannot take (it is always streamed, segment by segment).
NOT_ON_SOCKET = frozenset(
    {"input", "stream", "stream_format", "cache", "timestamps", "dialogue", "dialogue_gap", "loudness"}
)
ContextId = Plain


class SpeechContextMessage(BaseModel):
    """One client message: text for a context (its first may carry options), or a command on it."""

    model_config = ConfigDict(extra="allow")  # the options, checked against SpeechCreateParams

    context_id: ContextId | None = Field(None, min_length=1, max_length=128)
    text: Text | None = None
    flush: bool = False
    flush_id: Plain | None = Field(None, max_length=128)
    close: bool = False
    cancel: bool = False
    keep_alive: bool = False  # no context: only resets the inactivity timer
    # voxport: ms with no new text after which an unfinished sentence is spoken (0: at once).
    max_buffer_delay_ms: int | None = Field(None, ge=0, le=60000)

    @model_validator(mode="after")
    def _addressed(self) -> SpeechContextMessage:
        if self.context_id is None and not self.keep_alive:
            raise ValueError("every message but a keep-alive names its context: 'context_id' is missing")
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# -- server events ----------------------------------------------------------------------------------


class ContextAudioEvent(BaseModel):
    type: Literal["audio"] = "audio"
    context_id: str
    audio: str  # base64 of the next encoded bytes, in the context's format
    sample_rate: int | None = None  # on a context's first audio event only


class ContextSegmentEvent(BaseModel):
    """A segment whose audio has all been sent: the text the engine read, where it lies on the context's
    audio clock (seconds from the context's first sample), and the caller's own text for it with its
    offsets into the context's text (everything sent to the context, joined: `[input_start:input_end]`)."""

    type: Literal["segment"] = "segment"
    context_id: str
    index: int
    text: str
    start: float
    end: float
    continued: bool  # voxport: generated as a continuation of the previous segment
    input_text: str
    input_start: int
    input_end: int


class ContextWarningsEvent(BaseModel):
    """An SSML context's document had elements stripped or ignored with a warning (before its segments)."""

    type: Literal["warnings"] = "warnings"
    context_id: str
    warnings: list[str]


class ContextFlushedEvent(BaseModel):
    type: Literal["flushed"] = "flushed"
    context_id: str
    flush_id: str | None = None


class ContextDoneEvent(BaseModel):
    type: Literal["done"] = "done"
    context_id: str
    usage: Usage


class ContextCancelledEvent(BaseModel):
    type: Literal["cancelled"] = "cancelled"
    context_id: str


class ContextError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ContextErrorEvent(BaseModel):
    """OpenAI's error envelope, scoped to one context (null: the message named none, or could not be
    read). The context ends; the socket stays open."""

    type: Literal["error"] = "error"
    context_id: str | None
    error: ContextError
