"""What the speech service hands back: a buffered `SpeechResult`, or a `SpeechStream` that owns its job's
registration, its admission slot and its cleanup (`aclose`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from voxport.speech.prepare import SpeechPlan
from voxport.speech.tickets import RequestTicket
from voxport.speech.timings import Timeline


@dataclass(frozen=True)
class SpeechResult:
    audio: bytes
    content_type: str
    sample_rate: int
    duration: float  # seconds of audio in `audio`, after speed
    usage: dict[str, int]
    segments: list[dict[str, Any]] | None = None  # with `timestamps` (speech/timings.py)

    def meta(self) -> dict[str, Any]:
        meta = {"content_type": self.content_type, "sample_rate": self.sample_rate, "duration": self.duration,
                "usage": self.usage}  # fmt: skip
        return meta if self.segments is None else {**meta, "segments": self.segments}

    @classmethod
    def from_cache(cls, payload: bytes, meta: dict[str, Any]) -> SpeechResult:
        return cls(payload, meta["content_type"], meta["sample_rate"], meta["duration"], meta["usage"],
                   meta.get("segments"))  # fmt: skip


class SpeechStream:
    """Encoded audio as it is generated (or an earlier identical stream's cached bytes). Iterate it once;
    `aclose` (idempotent) stops the generation, frees the admission slot and unregisters the job."""

    def __init__(self, prepared: SpeechPlan, job: RequestTicket, chunks: AsyncIterator[bytes],
                 close: Callable[[], Awaitable[None]], timeline: Timeline | None = None):  # fmt: skip
        self.prepared = prepared
        self.timeline = timeline  # where each segment sits, as it is generated (speech/timings.py)
        self.job = job
        self._chunks = chunks
        self._close = close
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            finally:
                await self._close()
