"""The speech service: request → voice → segments → engine → joined audio → encoder.

Nothing HTTP-specific lives here beyond raising `APIError`s for the API layer to render.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from voxport.api.errors import APIError, invalid
from voxport.api.protocol import SpeechCreateParams
from voxport.audio import FORMATS, encode, encode_stream
from voxport.config import Settings
from voxport.engine.base import (
    Engine,
    EngineInputError,
    EngineUnavailable,
    GenerationStats,
    SynthesisRequest,
)
from voxport.text import segment
from voxport.voices import DesignedVoice, design_prefix

log = logging.getLogger("voxport.speech")

# Consecutive segments are cross-faded over this long to join without a click.
CROSSFADE_SECONDS = 0.01


class RequestCancelled(Exception):
    """The request was cancelled (client gone, or POST /v1/audio/speech/cancel)."""


@dataclass(frozen=True)
class PreparedSpeech:
    """A validated request: the segments to synthesise in order, and how to encode them."""

    segments: tuple[SynthesisRequest, ...]
    response_format: str
    sample_rate: int
    speed: float
    stream: bool
    sse: bool


@dataclass
class SpeechJob:
    """One request in flight: its cancel switch and what it has produced so far."""

    request_id: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.perf_counter)
    first_audio: float | None = None  # seconds from start to the first audio chunk
    samples: int = 0
    input_tokens: int = 0
    output_steps: int = 0

    @property
    def usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_steps,
            "total_tokens": self.input_tokens + self.output_steps,
        }


@dataclass(frozen=True)
class SpeechResult:
    audio: bytes
    content_type: str
    sample_rate: int
    duration: float  # seconds of audio in `audio`, after speed


async def _until_cancelled(
    chunks: AsyncIterator[np.ndarray], cancel: asyncio.Event
) -> AsyncIterator[np.ndarray]:
    """Pass `chunks` through until `cancel` is set; then abandon them at once (the engine stops
    within one step) and raise RequestCancelled."""
    waiter = asyncio.ensure_future(cancel.wait())
    step: asyncio.Future[np.ndarray] | None = None
    try:
        while True:
            step = asyncio.ensure_future(chunks.__anext__())
            await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                raise RequestCancelled
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield chunk
    finally:
        # Whatever ends this (cancel, our own consumer leaving, an error), the pending step is
        # cancelled first: the engine's iterator cannot be closed while a step is running in it.
        waiter.cancel()
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step
        await chunks.aclose()  # type: ignore[attr-defined]


class SpeechService:
    def __init__(self, settings: Settings, engine: Engine, voices: dict[str, DesignedVoice]):
        self.settings = settings
        self.engine = engine
        self.voices = voices
        self.active: dict[str, list[SpeechJob]] = {}
        self.cancelled_total = 0

    @property
    def in_flight(self) -> int:
        return sum(len(jobs) for jobs in self.active.values())

    # -- validation ------------------------------------------------------------------------------

    def prepare(self, params: SpeechCreateParams, stream: bool = False) -> PreparedSpeech:
        """Validate what pydantic cannot (server limits, names, per-format rates); raise 4xx."""
        settings = self.settings
        if params.model not in settings.model_ids:
            raise APIError(
                404,
                f"The model '{params.model}' does not exist. Available: {', '.join(settings.model_ids)}.",
                param="model",
                code="model_not_found",
            )
        if not params.input.strip():
            raise invalid("'input' must contain text to speak.", "input")
        if len(params.input) > settings.max_input_chars:
            raise invalid(
                f"'input' is {len(params.input)} characters; the maximum is {settings.max_input_chars}.",
                "input",
                "string_too_long",
            )
        voice = self.voices.get(params.voice_id or settings.default_voice)
        if voice is None:
            raise invalid(
                f"Unknown voice '{params.voice_id}'. Available: {', '.join(self.voices)}.",
                "voice",
                "voice_not_found",
            )
        spec = FORMATS[params.response_format]
        rate = params.sample_rate or spec.default_rate
        if spec.rates is not None and rate not in spec.rates:
            raise invalid(
                f"sample_rate {rate} is not available for {spec.name}; choose one of "
                f"{', '.join(map(str, spec.rates))}.",
                "sample_rate",
            )
        max_length = params.max_length or settings.max_length
        if max_length > settings.max_length:
            raise invalid(
                f"max_length {max_length} exceeds this server's limit of {settings.max_length}.", "max_length"
            )
        sse = params.stream_format == "sse"
        stream = stream or sse or params.stream
        prefix = design_prefix(voice.description, params.instructions)
        texts = self._segments(params.input, prefix, max_length, stream)
        segments = tuple(
            SynthesisRequest(
                text=prefix + text,
                voice=None,
                cfg_value=params.cfg_value,
                inference_timesteps=params.inference_timesteps,
                max_length=max_length,
                # A designed voice keeps its seed unless the request asks for another: the same
                # voice then sounds the same from request to request, and segment to segment.
                seed=voice.seed if params.seed is None else params.seed,
                normalize=params.normalize,
            )
            for text in texts
        )
        return PreparedSpeech(segments, params.response_format, rate, params.speed, stream, sse)

    def _segments(self, text: str, prefix: str, max_length: int, stream: bool) -> list[str]:
        """Streaming: one segment per sentence, for the earliest first audio. Otherwise one segment,
        unless the text cannot fit one generation window; then sentences packed up to the cap."""
        cap = self.settings.segment_max_chars
        if stream:
            return segment(text, cap, pack=False)
        tokens = self.engine.count_tokens(prefix + text)
        if tokens + 1 + min(6 * tokens + 10, max_length) <= self.engine.info.max_model_len:
            return [text]
        return segment(text, cap, pack=True)

    # -- request registry ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def track(self, request_id: str) -> AsyncIterator[SpeechJob]:
        """Register a request as in flight, so that it can be counted and cancelled by id."""
        if not self.engine.ready:
            raise APIError(
                503,
                "The speech engine is not ready.",
                type="server_error",
                code="engine_unavailable",
                headers={"Retry-After": "5"},
            )
        job = SpeechJob(request_id)
        self.active.setdefault(request_id, []).append(job)
        try:
            yield job
        finally:
            jobs = self.active[request_id]
            jobs.remove(job)
            if not jobs:
                del self.active[request_id]
            if job.cancel.is_set():
                self.cancelled_total += 1

    def cancel(self, request_id: str) -> bool:
        jobs = self.active.get(request_id)
        if not jobs:
            return False
        for job in jobs:
            job.cancel.set()
        return True

    # -- audio -----------------------------------------------------------------------------------

    async def audio(self, prepared: PreparedSpeech, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        """The joined float32 audio of every segment, at the engine's rate, as it is generated.

        The last few milliseconds of each segment are held back and cross-faded into the next one.
        """
        rate = self.engine.info.sample_rate
        overlap = max(1, int(rate * CROSSFADE_SECONDS))
        last = len(prepared.segments) - 1
        held = np.zeros(0, dtype=np.float32)
        try:
            for index, request in enumerate(prepared.segments):
                stats = GenerationStats()
                fresh = True
                async for chunk in _until_cancelled(self.engine.generate(request, stats), job.cancel):
                    if fresh and len(held):
                        n = min(len(held), len(chunk))
                        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
                        chunk = chunk.copy()
                        chunk[:n] = held[len(held) - n :] * (1.0 - ramp) + chunk[:n] * ramp
                        held = held[: len(held) - n]
                    fresh = False
                    joined = np.concatenate([held, chunk]) if len(held) else chunk
                    if index < last:
                        joined, held = joined[:-overlap], joined[-overlap:]
                    else:
                        held = held[:0]
                    if len(joined):
                        yield self._count(job, joined)
                job.input_tokens += stats.input_tokens
                job.output_steps += stats.steps
            if len(held):
                yield self._count(job, held)
        except EngineInputError as exc:
            raise invalid(str(exc), exc.param) from None
        except EngineUnavailable as exc:
            raise APIError(503, str(exc), type="server_error", code="engine_unavailable") from None

    def _count(self, job: SpeechJob, chunk: np.ndarray) -> np.ndarray:
        if job.first_audio is None:
            job.first_audio = time.perf_counter() - job.started
        job.samples += len(chunk)
        return chunk

    async def synthesize(self, prepared: PreparedSpeech, job: SpeechJob) -> SpeechResult:
        """The whole utterance, encoded."""
        chunks = [chunk async for chunk in self.audio(prepared, job)]
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        rate = self.engine.info.sample_rate
        data = await asyncio.to_thread(
            encode, audio, rate, prepared.response_format, prepared.sample_rate, prepared.speed
        )
        self.log_done(prepared, job)
        return SpeechResult(
            data,
            FORMATS[prepared.response_format].content_type,
            prepared.sample_rate,
            len(audio) / rate / prepared.speed,
        )

    async def stream(self, prepared: PreparedSpeech, job: SpeechJob) -> AsyncIterator[bytes]:
        """Encoded audio as it is generated. The first audio chunk is awaited before this returns,
        so that a request the engine refuses still gets a proper 4xx before any byte is sent."""
        audio = self.audio(prepared, job)
        try:
            first = await audio.__anext__()
        except StopAsyncIteration:
            first = None

        async def chunks() -> AsyncIterator[np.ndarray]:
            try:
                if first is not None:
                    yield first
                    async for chunk in audio:
                        yield chunk
            except RequestCancelled:
                pass  # stop cleanly: the encoder finishes what it has, the file stays valid
            finally:
                await audio.aclose()

        rate = self.engine.info.sample_rate

        async def encoded() -> AsyncIterator[bytes]:
            try:
                async for data in encode_stream(
                    chunks(), rate, prepared.response_format, prepared.sample_rate, prepared.speed
                ):
                    yield data
            except (asyncio.CancelledError, GeneratorExit):
                job.cancel.set()  # the client went away mid-stream
                raise
            finally:
                self.log_done(prepared, job)

        return encoded()

    def log_done(self, prepared: PreparedSpeech, job: SpeechJob) -> None:
        rate = self.engine.info.sample_rate
        first = f"{job.first_audio * 1000:.0f}ms" if job.first_audio is not None else "-"
        log.info(
            "request %s: %s%s, %d segment(s), %.2fs audio, first audio %s, total %.2fs%s%s",
            job.request_id,
            prepared.response_format,
            " stream" if prepared.stream else "",
            len(prepared.segments),
            job.samples / rate / prepared.speed,
            first,
            time.perf_counter() - job.started,
            ", cancelled" if job.cancel.is_set() else "",
            f", text {[s.text for s in prepared.segments]!r}" if self.settings.log_request_text else "",
        )
