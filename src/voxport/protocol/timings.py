"""Dialogue turns, segment timings, and the shapes that carry them: the JSON body of a `timestamps`
request and the `speech.audio.segment` SSE event (voxport extensions; OpenAI has neither)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voxport.protocol.fields import NonEmpty, Text

MAX_TURNS = 100


class DialogueTurn(BaseModel):
    """One speaker's turn of a `dialogue`: its voice (a name; uploads do not apply), its text and,
    optionally, its own style instructions (else the request's)."""

    model_config = ConfigDict(extra="forbid")
    voice: NonEmpty
    input: Text = Field(min_length=1)
    instructions: Text | None = Field(None, max_length=4096)


class SpeechSegment(BaseModel):
    """Where one synthesised segment (a sentence, or a piece of a long one) sits in the output audio,
    in seconds of the audio as delivered (after `speed` and resampling)."""

    index: int
    text: str
    start: float
    # null only in a stream's `speech.audio.segment` event: the segment is still being generated.
    end: float | None
    turn: int | None = None  # dialogue: the turn it belongs to (0-based)
    voice: str | None = None  # dialogue: that turn's voice
    # The caller's own text for this segment and its character offsets (Python string indices) into
    # `input`, or into an SSML document's text content; absent where not known (a dialogue).
    input_text: str | None = None
    input_start: int | None = None
    input_end: int | None = None
    # Word timings need a forced aligner, which this server does not run: always null for now.
    words: list[dict] | None = None


class SpeechTimedAudio(BaseModel):
    """POST /v1/audio/speech with `timestamps: true` (not streamed): the audio and its segment times."""

    object: Literal["speech.audio"] = "speech.audio"
    audio: str  # base64 of the whole encoded file
    content_type: str
    sample_rate: int
    duration: float
    granularity: Literal["segment"] = "segment"
    segments: list[SpeechSegment]


class SpeechAudioSegmentEvent(SpeechSegment):
    """Sent in a `stream_format: sse` stream with `timestamps: true` before the segment's audio."""

    type: Literal["speech.audio.segment"] = "speech.audio.segment"
